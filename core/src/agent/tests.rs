//! The agent's decisions under a simulated clock: no sockets, no sleeping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::checklist::{
    choose, usable_candidates, Checklist, ChecklistConfig, Opener, Selected, Transmit,
    FIRST_INTERVAL, GRACE, MAX_CANDIDATES, MAX_INTERVAL, MAX_PEER_REFLEXIVE, OPENER_LEAD,
};
use super::path::{
    check_targets, direct_candidates, gather, path_kind, plan_path, relay_plan, PathPlan,
};
use super::schedule::{
    opener, relay_refresh_every, retry_delay, Backoff, UpgradeSchedule, MAX_OPENER_LEAD,
};
use crate::config::RelayPolicy;
use crate::signal::proto::{Offer, Role};
use crate::status::PathKind;
use crate::stun::client::NatType;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

fn list(
    remote: &[&str],
    timeout_ms: u64,
    keep_going: bool,
    direct: bool,
    t0: Instant,
) -> Checklist {
    list_opening(remote, timeout_ms, keep_going, direct, None, t0)
}

fn list_opening(
    remote: &[&str],
    timeout_ms: u64,
    keep_going: bool,
    direct: bool,
    opener: Option<Opener>,
    t0: Instant,
) -> Checklist {
    Checklist::with_seed(
        ChecklistConfig {
            remote: remote.iter().map(|s| a(s)).collect(),
            timeout: Duration::from_millis(timeout_ms),
            keep_going,
            direct,
            opener,
        },
        t0,
        7,
    )
}

fn drain(l: &mut Checklist) -> Vec<Transmit> {
    std::iter::from_fn(|| l.poll_transmit()).collect()
}

/// Runs the list's timers from `t0` until `until` (or until it is over), answering
/// nothing; returns when each round went out and what it sent.
fn run_silent(l: &mut Checklist, until: Instant) -> Vec<(Instant, Vec<Transmit>)> {
    let mut rounds = Vec::new();
    while let Some(at) = l.poll_timeout() {
        if at > until {
            break;
        }
        l.handle_timeout(at);
        let sent = drain(l);
        if !sent.is_empty() {
            rounds.push((at, sent));
        }
    }
    rounds
}

#[test]
fn checks_every_candidate_each_round_slowing_down_to_the_cap() {
    let t0 = Instant::now();
    let mut l = list(
        &["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"],
        10_000,
        false,
        false,
        t0,
    );
    let rounds = run_silent(&mut l, t0 + Duration::from_secs(10));
    // The first round goes out at once, to every candidate in priority order, each with
    // its own transaction id.
    let (first_at, first) = &rounds[0];
    assert_eq!(*first_at, t0);
    let to: Vec<SocketAddr> = first.iter().map(|t| t.to).collect();
    assert_eq!(to, vec![a("10.0.0.1:1"), a("10.0.0.2:2"), a("10.0.0.3:3")]);
    let indices: Vec<usize> = first.iter().map(|t| t.index).collect();
    assert_eq!(indices, vec![0, 1, 2]);
    // Gaps grow by ×1.3 from 50 ms (plus ≤ 20 % jitter) and settle at 500 ms (+ jitter).
    let gaps: Vec<Duration> = rounds.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let mut interval = FIRST_INTERVAL;
    for (i, gap) in gaps.iter().enumerate() {
        interval = interval.mul_f32(1.3).min(MAX_INTERVAL);
        let most = interval + interval / 5 + Duration::from_millis(1);
        assert!(
            *gap >= interval && *gap <= most,
            "gap {i} is {gap:?}, expected {interval:?}..={most:?}"
        );
    }
    assert!(gaps.len() > 15, "10 s of rounds: {}", gaps.len());
    // Retransmissions are new transactions: no id is reused.
    let mut tids: Vec<_> = rounds
        .iter()
        .flat_map(|(_, r)| r.iter().map(|t| t.tid))
        .collect();
    let n = tids.len();
    tids.sort();
    tids.dedup();
    assert_eq!(tids.len(), n, "transaction ids are unique");
    assert_eq!(
        l.tids().count(),
        n,
        "every id is remembered for unregistering"
    );
}

#[test]
fn gives_up_at_the_deadline_and_sends_nothing_after() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1"], 1_000, false, false, t0);
    let rounds = run_silent(&mut l, t0 + Duration::from_secs(5));
    assert_eq!(l.outcome(), Some(None), "no answer: no pair");
    assert!(
        l.poll_timeout().is_none(),
        "an ended list asks for no timer"
    );
    let last = rounds.last().expect("rounds went out").0;
    assert!(
        last < t0 + Duration::from_secs(1),
        "no check after the deadline"
    );
    l.handle_timeout(t0 + Duration::from_secs(6));
    assert!(l.poll_transmit().is_none());
}

#[test]
fn nominates_the_top_candidate_at_once() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1", "10.0.0.2:2"], 5_000, false, false, t0);
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    let t1 = t0 + Duration::from_millis(20);
    assert!(l.on_response(sent[0].tid, sent[0].to, true, t1));
    assert_eq!(
        l.outcome(),
        Some(Some(Selected {
            remote: a("10.0.0.1:1"),
            index: 0
        }))
    );
}

#[test]
fn a_lower_pair_waits_the_grace_period_for_a_better_one() {
    let t0 = Instant::now();
    let mut l = list(
        &["10.0.0.1:1", "10.0.0.2:2", "10.0.0.3:3"],
        5_000,
        false,
        false,
        t0,
    );
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    // Candidate 2 answers first: not final yet, a better one may follow.
    let t1 = t0 + Duration::from_millis(10);
    l.on_response(sent[2].tid, sent[2].to, true, t1);
    assert_eq!(l.outcome(), None);
    // The list wakes for the next round or at the end of the grace, whichever is first.
    let wake = l.poll_timeout().expect("still running");
    assert!(wake > t1 && wake <= t1 + GRACE, "{:?}", wake - t1);
    // Candidate 1 answers within the grace period; once it passes, 1 is chosen.
    l.on_response(
        sent[1].tid,
        sent[1].to,
        true,
        t1 + Duration::from_millis(50),
    );
    assert_eq!(l.outcome(), None);
    l.handle_timeout(t1 + GRACE);
    assert_eq!(l.outcome().flatten().map(|s| s.index), Some(1));
}

#[test]
fn alone_a_lower_pair_is_nominated_after_the_grace_period() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1", "10.0.0.2:2"], 5_000, false, false, t0);
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    l.on_response(sent[1].tid, sent[1].to, true, t0);
    // Rounds go on (to the unanswered top candidate only) until the grace ends.
    let rounds = run_silent(&mut l, t0 + GRACE);
    assert!(rounds.iter().all(|(_, r)| r.iter().all(|t| t.index == 0)));
    assert_eq!(l.outcome().flatten().map(|s| s.index), Some(1));
}

#[test]
fn inauthentic_unknown_and_late_answers_change_nothing() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1"], 5_000, false, false, t0);
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    assert!(
        !l.on_response([9; 12], sent[0].to, true, t0),
        "not our transaction"
    );
    assert!(
        l.on_response(sent[0].tid, sent[0].to, false, t0),
        "ours, but forged"
    );
    assert!(l.successes().is_empty());
    assert_eq!(l.outcome(), None);
}

#[test]
fn keep_going_checks_after_success_and_decides_at_the_deadline() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1", "10.0.0.2:2"], 1_000, true, false, t0);
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    l.on_response(sent[1].tid, sent[1].to, true, t0);
    assert_eq!(l.outcome(), None, "the server keeps its NAT open");
    let rounds = run_silent(&mut l, t0 + Duration::from_millis(900));
    assert!(
        rounds.iter().all(|(_, r)| r.len() == 2),
        "both candidates are still checked"
    );
    run_silent(&mut l, t0 + Duration::from_secs(2));
    assert_eq!(l.outcome().flatten().map(|s| s.index), Some(1));
}

#[test]
fn peer_reflexive_candidates_are_checked_at_once_and_bounded() {
    let t0 = Instant::now();
    let mut l = list(&["10.0.0.1:1"], 5_000, false, false, t0);
    l.handle_timeout(t0);
    drain(&mut l);
    l.on_peer_reflexive(a("198.51.100.1:7000"), t0);
    let sent = drain(&mut l);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].to, sent[0].index), (a("198.51.100.1:7000"), 1));
    // Known again: nothing new.
    l.on_peer_reflexive(a("198.51.100.1:7000"), t0);
    l.on_peer_reflexive(a("10.0.0.1:1"), t0);
    assert!(drain(&mut l).is_empty());
    // At most MAX_CANDIDATES + MAX_PEER_REFLEXIVE in all.
    for p in 0..100 {
        l.on_peer_reflexive(SocketAddr::from(([198, 51, 100, 2], 8000 + p)), t0);
    }
    assert_eq!(l.remote().len(), MAX_CANDIDATES + MAX_PEER_REFLEXIVE);
    // An answer to the peer-reflexive check succeeds like any other.
    l.on_response(sent[0].tid, sent[0].to, true, t0);
    l.handle_timeout(t0 + GRACE);
    assert_eq!(
        l.outcome().flatten().map(|s| s.remote),
        Some(a("198.51.100.1:7000"))
    );
}

/// A peer whose answers leave its NAT from another port than the one we sent to
/// (a symmetric NAT answering through a new mapping): our request reached it at the
/// address we checked, so that pair succeeds and is what the tunnel dials. A direct
/// probe (upgrade off the relay) counts only answers straight from the address
/// checked, since an answer from elsewhere may have come through the relay.
#[test]
fn answers_from_another_port() {
    let t0 = Instant::now();
    let checked = "203.0.113.5:4000";
    let answered_from = a("203.0.113.5:4711");

    let mut l = list(&[checked], 5_000, false, false, t0);
    l.handle_timeout(t0);
    let sent = drain(&mut l);
    l.on_response(sent[0].tid, answered_from, true, t0);
    assert_eq!(
        l.outcome(),
        Some(Some(Selected {
            remote: a(checked),
            index: 0
        })),
        "the address we sent to is nominated, not the one the answer came from"
    );

    let mut direct = list(&[checked], 1_000, false, true, t0);
    direct.handle_timeout(t0);
    let sent = drain(&mut direct);
    direct.on_response(sent[0].tid, answered_from, true, t0);
    assert!(
        direct.successes().is_empty(),
        "a direct probe needs a straight answer"
    );
    run_silent(&mut direct, t0 + Duration::from_secs(2));
    assert_eq!(direct.outcome(), Some(None));
    // A straight answer does count.
    let mut direct = list(&[checked], 1_000, false, true, t0);
    direct.handle_timeout(t0);
    let sent = drain(&mut direct);
    direct.on_response(sent[0].tid, a(checked), true, t0);
    assert_eq!(
        direct.outcome().flatten().map(|s| s.remote),
        Some(a(checked))
    );
}

#[test]
fn choose_prefers_the_top_candidate_and_waits_grace_for_better() {
    let t0 = Instant::now();
    let s = |index| Selected {
        remote: a("10.0.0.1:1"),
        index,
    };
    assert_eq!(choose(&[], None, t0), None);
    assert_eq!(choose(&[s(0)], Some(t0), t0), Some(s(0)));
    assert_eq!(choose(&[s(2)], Some(t0), t0), None);
    assert_eq!(choose(&[s(2), s(1)], Some(t0), t0 + GRACE), Some(s(1)));
}

#[test]
fn candidates_filtered_and_deduplicated() {
    let local = a("0.0.0.0:4000");
    let got = usable_candidates(
        local,
        &[
            a("192.168.1.2:5000"),
            a("[::1]:5000"),
            a("192.168.1.2:5000"),
            a("203.0.113.9:6000"),
            a("0.0.0.0:1"),
        ],
    );
    assert_eq!(got, vec![a("192.168.1.2:5000"), a("203.0.113.9:6000")]);
    let lo = usable_candidates(
        a("127.0.0.1:4000"),
        &[a("10.0.0.2:5000"), a("127.0.0.1:5000")],
    );
    assert_eq!(lo, vec![a("127.0.0.1:5000")]);
    let many: Vec<SocketAddr> = (1..100)
        .map(|p| SocketAddr::from(([10, 0, 0, 1], p)))
        .collect();
    assert_eq!(usable_candidates(local, &many).len(), MAX_CANDIDATES);
}

fn offer(
    nat: &str,
    candidates: &[&str],
    host_count: usize,
    relay_count: usize,
    turn: bool,
) -> Offer {
    Offer {
        role: Role::Client,
        id: "peer".into(),
        nonce: "n".into(),
        ts: 0,
        candidates: candidates.iter().map(|s| a(s)).collect(),
        host_count,
        relay_count,
        turn,
        fp: String::new(),
        nat: nat.into(),
        predict: None,
        comb: None,
        client: None,
        refused: None,
    }
}

#[test]
fn gathering_orders_host_then_mapped_then_relayed() {
    let host = [a("192.168.1.2:4000")];
    let mapped = [a("203.0.113.1:4000"), a("192.168.1.2:4000")];
    let relayed = Some(a("198.51.100.9:50000"));
    let g = gather(&host, mapped, relayed, false);
    assert_eq!(
        g.candidates,
        vec![
            a("192.168.1.2:4000"),
            a("203.0.113.1:4000"),
            a("198.51.100.9:50000")
        ]
    );
    assert_eq!((g.host_count, g.relay_count), (1, 1));
    let always = gather(&host, mapped, relayed, true);
    assert_eq!(always.candidates, vec![a("198.51.100.9:50000")]);
    assert_eq!((always.host_count, always.relay_count), (0, 1));
    let none = gather(&host, [], None, false);
    assert_eq!((none.candidates.len(), none.relay_count), (1, 0));
}

#[test]
fn relay_is_used_when_direct_is_hopeless_and_never_against_policy() {
    let auto = relay_plan(RelayPolicy::Auto, true);
    assert!(
        auto.allowed && !auto.always,
        "auto gathers the relay at the start (#16)"
    );
    assert!(relay_plan(RelayPolicy::Always, true).allowed);
    assert!(!relay_plan(RelayPolicy::Never, true).allowed);
    assert!(!relay_plan(RelayPolicy::Never, true).always);
    assert!(!relay_plan(RelayPolicy::Auto, false).allowed);

    let sym = NatType::Symmetric;
    let port_restricted = offer("port-restricted", &["203.0.113.1:1"], 0, 0, true);
    // Not hopeless: punch.
    let cone = offer("full-cone", &["203.0.113.1:1"], 0, 0, false);
    assert_eq!(
        plan_path(Role::Client, sym, 0, &cone, auto, RelayPolicy::Auto, false),
        PathPlan::Punch
    );
    // Hopeless: the server allocates; the client waits for the server's relay.
    assert_eq!(
        plan_path(
            Role::Server,
            sym,
            0,
            &port_restricted,
            auto,
            RelayPolicy::Auto,
            false
        ),
        PathPlan::AllocateRelay
    );
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &port_restricted,
            auto,
            RelayPolicy::Auto,
            false
        ),
        PathPlan::WaitForPeerRelay
    );
    // A server that cannot relay: the client allocates.
    let no_turn = offer("port-restricted", &["203.0.113.1:1"], 0, 0, false);
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &no_turn,
            auto,
            RelayPolicy::Auto,
            false
        ),
        PathPlan::AllocateRelay
    );
    // Nobody can relay: no path.
    let never = relay_plan(RelayPolicy::Never, true);
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &no_turn,
            never,
            RelayPolicy::Never,
            false
        ),
        PathPlan::NoPath
    );
    // Either offer already relayed: punch toward it.
    let relayed = offer(
        "port-restricted",
        &["203.0.113.1:1", "198.51.100.9:2"],
        0,
        1,
        true,
    );
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &relayed,
            auto,
            RelayPolicy::Auto,
            false
        ),
        PathPlan::Punch
    );
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            1,
            &no_turn,
            auto,
            RelayPolicy::Auto,
            false
        ),
        PathPlan::Punch
    );
}

#[test]
fn birthday_punching_makes_only_symmetric_with_symmetric_hopeless() {
    let auto = relay_plan(RelayPolicy::Auto, true);
    let never = relay_plan(RelayPolicy::Never, false);
    let sym = NatType::Symmetric;
    let port_restricted = offer("port-restricted", &["203.0.113.1:1"], 0, 0, false);
    let symmetric = offer("symmetric", &["203.0.113.1:1"], 0, 0, false);
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &port_restricted,
            never,
            RelayPolicy::Never,
            true
        ),
        PathPlan::Punch,
        "birthday punching reaches a port-restricted NAT from a symmetric one"
    );
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &symmetric,
            never,
            RelayPolicy::Never,
            true
        ),
        PathPlan::NoPath
    );
    assert_eq!(
        plan_path(
            Role::Client,
            sym,
            0,
            &symmetric,
            auto,
            RelayPolicy::Auto,
            true
        ),
        PathPlan::AllocateRelay
    );
}

#[test]
fn birthday_sides_follow_the_evidence() {
    use crate::agent::birthday::Side;
    use crate::agent::path::{birthday_plan, BirthdayStart, BIRTHDAY_ESCALATION};
    let at = |side, after| BirthdayStart { side, after };
    let zero = Duration::ZERO;
    // Known types: the symmetric side is hard, the port-restricted or cone one easy,
    // from the start.
    assert_eq!(
        birthday_plan(NatType::Symmetric, NatType::PortRestricted, false),
        vec![at(Side::Hard, zero)]
    );
    assert_eq!(
        birthday_plan(NatType::Cone, NatType::Symmetric, false),
        vec![at(Side::Easy, zero)]
    );
    // Plain checks connect these: no birthday.
    for (a, b) in [
        (NatType::Symmetric, NatType::Symmetric),
        (NatType::Symmetric, NatType::FullCone),
        (NatType::AddressRestricted, NatType::Symmetric),
        (NatType::PortRestricted, NatType::PortRestricted),
        (NatType::Open, NatType::Nat),
    ] {
        assert_eq!(birthday_plan(a, b, false), vec![], "{a} with {b}");
    }
    // Plain STUN: either could be hard; both parts, after plain checks had their go.
    assert_eq!(
        birthday_plan(NatType::Nat, NatType::Nat, false),
        vec![
            at(Side::Hard, BIRTHDAY_ESCALATION),
            at(Side::Easy, BIRTHDAY_ESCALATION)
        ]
    );
    assert_eq!(
        birthday_plan(NatType::Symmetric, NatType::Nat, false),
        vec![at(Side::Hard, BIRTHDAY_ESCALATION)]
    );
    // Failed before for this pair: plain checks first.
    assert_eq!(
        birthday_plan(NatType::Symmetric, NatType::PortRestricted, true),
        vec![at(Side::Hard, BIRTHDAY_ESCALATION)]
    );
}

#[test]
fn path_kinds_and_targets_follow_the_offer_layout() {
    let peer = offer(
        "full-cone",
        &["192.168.1.2:1", "203.0.113.1:1", "198.51.100.9:2"],
        1,
        1,
        true,
    );
    assert_eq!(path_kind(&peer, a("192.168.1.2:1"), false), PathKind::Lan);
    assert_eq!(
        path_kind(&peer, a("203.0.113.1:1"), false),
        PathKind::Direct
    );
    assert_eq!(
        path_kind(&peer, a("198.51.100.9:2"), false),
        PathKind::Relay
    );
    assert_eq!(
        path_kind(&peer, a("203.0.113.77:9"), false),
        PathKind::Direct,
        "peer-reflexive"
    );
    assert_eq!(
        path_kind(&peer, a("203.0.113.1:1"), true),
        PathKind::Relay,
        "via our relay"
    );
    assert_eq!(check_targets(&peer, true), vec![a("198.51.100.9:2")]);
    assert_eq!(check_targets(&peer, false).len(), 3);
    assert_eq!(
        direct_candidates(&peer),
        &[a("192.168.1.2:1"), a("203.0.113.1:1")]
    );
}

/// Relay first, then upgrade: while relayed, direct probes go out 2 s, 4 s, … 60 s
/// apart; a probe round that gets a straight answer nominates the direct pair.
#[test]
fn upgrade_probes_back_off_and_a_straight_answer_upgrades() {
    let mut s = UpgradeSchedule::default();
    let waits: Vec<u64> = (0..8).map(|_| s.next_wait().as_secs()).collect();
    assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);

    let t0 = Instant::now();
    let peer = offer(
        "full-cone",
        &["203.0.113.1:1", "198.51.100.9:2"],
        0,
        1,
        true,
    );
    let targets: Vec<String> = direct_candidates(&peer)
        .iter()
        .map(|c| c.to_string())
        .collect();
    let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let mut probe = list(
        &refs,
        UpgradeSchedule::PROBE_TIMEOUT.as_millis() as u64,
        false,
        true,
        t0,
    );
    probe.handle_timeout(t0);
    let sent = drain(&mut probe);
    assert_eq!(sent.len(), 1, "only the direct candidate is probed");
    probe.on_response(sent[0].tid, sent[0].to, true, t0);
    let sel = probe.outcome().flatten().expect("upgraded");
    assert_eq!(path_kind(&peer, sel.remote, false), PathKind::Direct);
}

#[test]
fn retry_schedule_doubles_then_settles_and_resets() {
    assert_eq!(retry_delay(1, 3), Duration::from_millis(500));
    assert_eq!(retry_delay(2, 3), Duration::from_millis(1000));
    assert_eq!(retry_delay(3, 3), Duration::from_millis(2000));
    assert_eq!(retry_delay(4, 3), Duration::from_secs(30));
    assert_eq!(
        retry_delay(9, 20),
        Duration::from_millis(500 * 64),
        "capped at ×64"
    );
    let mut b = Backoff::new(3);
    let waits: Vec<Duration> = (0..5).map(|_| b.failed()).collect();
    assert_eq!(
        waits,
        [500, 1000, 2000, 30_000, 30_000]
            .map(Duration::from_millis)
            .to_vec()
    );
    assert_eq!(b.failures(), 5);
    b.reset();
    assert_eq!(
        b.failed(),
        Duration::from_millis(500),
        "the peer started over"
    );
}

#[test]
fn relay_refresh_keeps_well_inside_the_lifetime() {
    assert_eq!(
        relay_refresh_every(Duration::from_secs(600)),
        Duration::from_secs(60)
    );
    assert_eq!(
        relay_refresh_every(Duration::from_secs(30)),
        Duration::from_secs(15)
    );
    assert_eq!(
        relay_refresh_every(Duration::from_millis(500)),
        Duration::from_secs(1)
    );
}

fn with_openers(remote: &[&str], t0: Instant) -> Checklist {
    let opener = Opener {
        ttl: 3,
        lead: OPENER_LEAD,
    };
    list_opening(remote, 10_000, false, false, Some(opener), t0)
}

/// #16: every candidate first gets one low-TTL opener, at once; the full-TTL rounds
/// start `OPENER_LEAD` later, so none of our checks can reach the peer's router before
/// the peer has opened its own NAT toward us.
#[test]
fn openers_go_first_with_their_ttl_and_full_checks_wait_the_lead() {
    let t0 = Instant::now();
    let mut l = with_openers(&["10.0.0.1:1", "198.51.100.7:7"], t0);
    assert_eq!(l.poll_timeout(), Some(t0), "the openers are due at once");
    let rounds = run_silent(&mut l, t0 + Duration::from_secs(2));
    let (at, openers) = &rounds[0];
    assert_eq!(*at, t0);
    assert_eq!(openers.len(), 2, "one opener per candidate: {openers:?}");
    assert!(openers.iter().all(|t| t.ttl == Some(3)), "{openers:?}");
    let (at, full) = &rounds[1];
    assert_eq!(*at, t0 + OPENER_LEAD, "the first full round waits the lead");
    assert!(full.iter().all(|t| t.ttl.is_none()), "{full:?}");
    assert!(
        rounds[1..]
            .iter()
            .flat_map(|(_, r)| r)
            .all(|t| t.ttl.is_none()),
        "only the first packet to each candidate is an opener"
    );
    // Without openers the first round is full at once (the old schedule).
    let mut plain = list(&["10.0.0.1:1"], 10_000, false, false, t0);
    let rounds = run_silent(&mut plain, t0 + Duration::from_millis(10));
    assert_eq!(rounds[0].0, t0);
    assert_eq!(rounds[0].1[0].ttl, None);
}

/// An opener that reaches the peer anyway (a peer one hop away) and is answered
/// succeeds like any check: a nearby peer does not wait for the lead.
#[test]
fn an_answered_opener_succeeds_at_once() {
    let t0 = Instant::now();
    let mut l = with_openers(&["10.0.0.1:1", "198.51.100.7:7"], t0);
    l.handle_timeout(t0);
    let openers = drain(&mut l);
    let t = t0 + Duration::from_millis(2);
    assert!(l.on_response(openers[0].tid, openers[0].to, true, t));
    assert_eq!(
        l.outcome(),
        Some(Some(Selected {
            remote: a("10.0.0.1:1"),
            index: 0
        }))
    );
}

/// #16: a punch that failed is not repeated the same way: each failure makes the lead
/// between openers and full checks four times longer (a failure with the short lead
/// most likely means the peers started further apart), up to a second; no TTL, no
/// openers.
#[test]
fn failed_punches_lengthen_the_opener_lead() {
    let leads: Vec<Duration> = (0..5)
        .map(|n| opener(Some(3), n).expect("openers").lead)
        .collect();
    assert_eq!(leads[0], OPENER_LEAD);
    assert_eq!(leads[1], OPENER_LEAD * 4);
    assert!(leads.windows(2).all(|w| w[0] <= w[1]), "{leads:?}");
    assert_eq!(leads[4], MAX_OPENER_LEAD);
    assert_eq!(opener(Some(5), 0).map(|o| o.ttl), Some(5));
    assert_eq!(opener(None, 3), None);
    assert_eq!(
        opener(Some(3), u32::MAX).map(|o| o.lead),
        Some(MAX_OPENER_LEAD)
    );
}

mod birthday {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::agent::birthday::{
        success_chance, Birthday, BirthdayConfig, Probe, Side, LOWEST_PORT, NEAR_PORTS, TICK,
    };

    fn config(side: Side) -> BirthdayConfig {
        BirthdayConfig {
            side,
            peer: "203.0.113.9:40000".parse().expect("addr"),
            sockets: 256,
            probes: 2000,
            rate: 1000,
            opener_ttl: Some(3),
            lead: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            premade: false,
        }
    }

    /// Runs the session's clock until it has nothing more to send (or `until`),
    /// returning every packet with the time it was queued.
    fn drain(b: &mut Birthday, start: Instant, until: Duration) -> Vec<(Duration, Probe)> {
        let mut out = Vec::new();
        let mut now = start;
        while now < start + until {
            b.handle_timeout(now);
            while let Some(p) = b.poll_transmit() {
                out.push((now - start, p));
            }
            match b.poll_timeout() {
                Some(t) if t > now => now = t,
                Some(_) => now += Duration::from_millis(1),
                None => break,
            }
        }
        out
    }

    #[test]
    fn the_hard_side_sends_one_low_ttl_opener_per_socket_at_the_rate() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Hard), start, 1);
        let sent = drain(&mut b, start, Duration::from_secs(1));
        assert_eq!(sent.len(), 256, "one opener per socket, no more");
        let sockets: HashSet<usize> = sent.iter().map(|(_, p)| p.socket).collect();
        assert_eq!(sockets.len(), 256);
        assert!(sent
            .iter()
            .all(|(_, p)| p.ttl == Some(3) && p.to == config(Side::Hard).peer));
        // 1,000 per second: 10 per 10 ms tick, so the last goes out after 250 ms.
        let per_tick = sent.iter().filter(|(t, _)| *t < TICK).count();
        assert_eq!(per_tick, 10);
        assert!(sent.last().expect("sent").0 >= Duration::from_millis(250));
        assert!(!b.gave_up());
        let mut b2 = Birthday::with_seed(config(Side::Hard), start, 1);
        drain(&mut b2, start, Duration::from_secs(11));
        assert!(b2.gave_up(), "gives up at the timeout");
    }

    #[test]
    fn the_easy_side_probes_the_near_window_top_down_then_random_ports_once_each() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Easy), start, 2);
        let sent = drain(&mut b, start, Duration::from_secs(5));
        assert_eq!(sent.len(), 2000, "the probe budget");
        assert!(
            sent[0].0 >= Duration::from_millis(100),
            "waits the lead for the hard side's mappings"
        );
        let ports: Vec<u16> = sent.iter().map(|(_, p)| p.to.port()).collect();
        let near: Vec<u16> = (1..=NEAR_PORTS).rev().map(|i| 40000 + i).collect();
        assert_eq!(&ports[..NEAR_PORTS as usize], &near[..]);
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len(), "no port twice");
        assert!(ports.iter().all(|p| *p >= LOWEST_PORT));
        assert!(sent.iter().all(|(_, p)| p.socket == 0
            && p.ttl.is_none()
            && p.to.ip() == config(Side::Easy).peer.ip()));
        // At most 10 per 10 ms.
        let first_second = sent
            .iter()
            .filter(|(t, _)| *t < Duration::from_millis(1100))
            .count();
        assert!(
            first_second <= 1000,
            "{first_second} probes in the first second"
        );
    }

    #[test]
    fn the_hard_side_answers_only_the_first_socket_reached_and_wins_on_an_authentic_answer() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Hard), start, 3);
        drain(&mut b, start, Duration::from_secs(1));
        let easy: SocketAddr = "203.0.113.9:40000".parse().expect("addr");
        assert!(b.on_request(17, easy), "the first socket reached answers");
        assert!(!b.on_request(30, easy), "another socket stays silent");
        assert!(b.on_request(17, easy));
        let back = b.poll_transmit().expect("a check back");
        assert_eq!((back.socket, back.to, back.ttl), (17, easy, None));
        assert!(b.won().is_none());
        // A forged answer (no valid integrity) or one on another socket is no win.
        assert!(b.on_response(back.tid, 17, easy, false));
        assert!(b.on_response(back.tid, 30, easy, true));
        assert!(b.won().is_none());
        assert!(
            !b.on_response([9u8; 12], 17, easy, true),
            "not our transaction"
        );
        assert!(b.on_response(back.tid, 17, easy, true));
        let won = b.won().expect("won");
        assert_eq!((won.socket, won.remote), (17, easy));
        assert_eq!(b.poll_timeout(), None, "over");
    }

    #[test]
    fn the_easy_side_wins_on_the_first_authentic_answer_to_a_probe() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Easy), start, 4);
        let sent = drain(&mut b, start, Duration::from_millis(300));
        let (_, probe) = sent[70];
        assert!(b.on_response(probe.tid, 0, probe.to, false));
        assert!(b.won().is_none(), "not authentic");
        assert!(b.on_response(probe.tid, 0, probe.to, true));
        assert_eq!(b.won().map(|w| w.remote), Some(probe.to));
        assert!(b.poll_transmit().is_none(), "stops spraying");
    }

    /// Review of #17: the check list takes a direct answer only from the address it
    /// checked; the easy side takes any authentic answer's source as the peer's address
    /// (an on-path replay of the hard side's answer from elsewhere redirects the tunnel).
    #[test]
    fn the_easy_side_takes_only_an_answer_from_the_port_it_probed() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Easy), start, 5);
        let sent = drain(&mut b, start, Duration::from_millis(300));
        let (_, probe) = sent[10];
        let elsewhere: SocketAddr = "198.51.100.7:9999".parse().expect("addr");
        b.on_response(probe.tid, 0, elsewhere, true);
        assert_ne!(
            b.won().map(|w| w.remote),
            Some(elsewhere),
            "the tunnel goes where the answer came from, not where the probe went"
        );
    }

    /// Review of #17: the hard side commits to the first socket an authentic check
    /// reaches, whoever sent it; the probes come from the easy side's public address
    /// (its NAT keeps one port), so a check from anywhere else is a replay.
    #[test]
    fn the_hard_side_takes_checks_only_from_the_peers_public_address() {
        let start = Instant::now();
        let mut b = Birthday::with_seed(config(Side::Hard), start, 6);
        drain(&mut b, start, Duration::from_secs(1));
        let stranger: SocketAddr = "198.51.100.7:9999".parse().expect("addr");
        let easy = config(Side::Hard).peer;
        assert!(!b.on_request(3, stranger), "a stranger's (replayed) check");
        assert!(b.on_request(4, easy), "the peer's own probe still gets in");
    }

    /// Review of #17: `birthdayRate` accepts 10-99 packets/s, but a tick sends at least
    /// one packet, so anything under 100/s goes out at 100/s.
    #[test]
    fn a_rate_under_100_per_second_is_kept() {
        let start = Instant::now();
        let mut c = config(Side::Hard);
        c.rate = 10;
        let mut b = Birthday::with_seed(c, start, 7);
        let sent = drain(&mut b, start, Duration::from_secs(1));
        let first_second = sent
            .iter()
            .filter(|(t, _)| *t < Duration::from_secs(1))
            .count();
        assert!(
            first_second <= 11,
            "{first_second} packets in the first second at 10/s"
        );
    }

    #[test]
    fn the_budget_gives_the_chances_the_docs_quote() {
        let range = u32::from(u16::MAX - LOWEST_PORT) + 1;
        let p1000 = success_chance(256, 1000, range);
        let p2000 = success_chance(256, 2000, range);
        assert!((p1000 - 0.981).abs() < 0.001, "{p1000}");
        assert!((p2000 - 0.9996).abs() < 0.0002, "{p2000}");
    }
}

/// Issue #17: from a dual-stack `[::]` socket both families are checked, in the
/// peer's order (its global IPv6 host candidate first, so a working IPv6 path is
/// nominated at once); a global IPv6 host candidate is a direct path, not a LAN one.
#[test]
fn a_dual_stack_socket_checks_ipv6_and_ipv4_and_calls_global_ipv6_direct() {
    let peer = offer(
        "port-restricted",
        &["[2001:db8:1:2::2]:4000", "10.0.2.2:4000", "198.18.0.9:4000"],
        2,
        0,
        false,
    );
    assert_eq!(
        usable_candidates(a("[::]:4000"), &peer.candidates),
        peer.candidates
    );
    assert_eq!(
        usable_candidates(a("0.0.0.0:4000"), &peer.candidates),
        &peer.candidates[1..]
    );
    assert_eq!(
        path_kind(&peer, a("[2001:db8:1:2::2]:4000"), false),
        PathKind::Direct
    );
    assert_eq!(path_kind(&peer, a("10.0.2.2:4000"), false), PathKind::Lan);
    let ula = offer("port-restricted", &["[fd10::2]:4000"], 1, 0, false);
    assert_eq!(path_kind(&ula, a("[fd10::2]:4000"), false), PathKind::Lan);
}

/// Issue #17: two symmetric IPv4 NATs are hopeless, but not when both peers also offer
/// a global IPv6 host address (a stateful firewall without NAT is punched like a
/// full cone); a ULA or one-sided IPv6 changes nothing.
#[test]
fn global_ipv6_on_both_sides_makes_any_nat_pair_punchable() {
    let v6 = offer(
        "symmetric",
        &["[2001:db8:1:3::2]:4000", "10.0.0.2:4000", "198.18.0.5:5000"],
        2,
        0,
        false,
    );
    let v4 = offer(
        "symmetric",
        &["10.0.1.2:4000", "198.18.0.6:5000"],
        1,
        0,
        false,
    );
    let ula = offer(
        "symmetric",
        &["[fd10::2]:4000", "198.18.0.7:5000"],
        1,
        0,
        false,
    );
    let srflx6 = offer(
        "symmetric",
        &["10.0.1.2:4000", "[2001:db8::9]:4000"],
        1,
        0,
        false,
    );
    assert!(super::path::both_on_global_ipv6(&v6, &v6));
    assert!(!super::path::both_on_global_ipv6(&v6, &v4));
    assert!(!super::path::both_on_global_ipv6(&ula, &v6));
    assert!(
        !super::path::both_on_global_ipv6(&v6, &srflx6),
        "host candidates only"
    );
}

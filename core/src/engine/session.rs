//! A connected tunnel: serving it until it is lost, following the peer's address,
//! and upgrading a relayed tunnel to a direct path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::shared::{Incoming, Shared};
use crate::agent::path;
use crate::agent::UpgradeSchedule;
use crate::config::RelayPolicy;
use crate::forward;
use crate::punch::{self, ChecklistConfig, Punch};
use crate::signal::proto::Role;
use crate::status::{PathKind, State, Technique};
use crate::sync::lock;
use crate::tunnel;

/// Serves one tunnel until it is lost; returns why.
pub(crate) async fn run_connected(
    shared: &Arc<Shared>,
    mut conn: quinn::Connection,
    path: PathKind,
    incoming: &mut Incoming,
) -> String {
    loop {
        let peer = crate::socket::peer_addr(&conn);
        {
            let mut p = lock(&shared.peer);
            p.path = Some(path);
            p.addr = Some(peer);
        }
        shared.conn_tx.send_replace(Some(conn.clone()));
        let found = lock(&shared.peer).technique.unwrap_or(Technique::Checks);
        shared.set_state(State::Connected {
            path,
            peer,
            technique: technique(path, found),
        });
        let conn_token = shared.root.child_token();
        let datagrams = crate::spawn(forward::dispatch::dispatch_datagrams(
            conn.clone(),
            shared.ctx.flows.clone(),
        ));
        if path == PathKind::Relay {
            crate::spawn(upgrade_to_direct(
                shared.clone(),
                conn.clone(),
                conn_token.clone(),
            ));
        }
        if shared.role == Role::Server {
            let (c, ctx, t) = (conn.clone(), shared.ctx.clone(), conn_token.clone());
            let budget = tunnel::StreamBudget::new(conn.clone(), &shared.config.performance);
            crate::spawn(async move {
                // The client reports connected only after this (see `await_welcome`).
                if let Err(e) = tunnel::send_welcome(&c).await {
                    tracing::debug!(error = %e, "welcome not sent");
                    return;
                }
                loop {
                    let stream = tokio::select! {
                        _ = t.cancelled() => return,
                        s = c.accept_bi() => s,
                    };
                    match stream {
                        Ok((send, recv)) => {
                            let open = budget.opened();
                            let serve = forward::tcp::serve_stream(
                                send,
                                recv,
                                c.clone(),
                                ctx.clone(),
                                t.clone(),
                            );
                            crate::spawn(async move {
                                let _open = open;
                                serve.await;
                            });
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        let replaced = async {
            if shared.role != Role::Server {
                return std::future::pending::<quinn::Connection>().await;
            }
            loop {
                match incoming.recv().await {
                    // A handshake that passed the pinned verifier: the peer came back
                    // (its old connection is dead from its point of view).
                    Some(c) if tunnel::peer_fingerprint(&c) == shared.pinned.get() => return c,
                    Some(c) => c.close(0u32.into(), b"superseded"),
                    None => return std::future::pending().await,
                }
            }
        };
        let mut replaced = std::pin::pin!(replaced);
        let mut tick = every_second();
        let mut current = peer;
        let mut liveness = Liveness::new(&conn);
        let outcome = loop {
            tokio::select! {
                e = conn.closed() => break Err(format!("tunnel to {peer} lost: {e}")),
                c = &mut replaced => break Ok(c),
                _ = tick.tick() => {
                    if let Some(waited) = liveness.dead(&conn) {
                        // Our packets go unanswered: a NAT on the way forgot us (it
                        // rebooted, or moved us to another port). Waiting for the idle
                        // timeout would leave the tunnel dead for seconds more.
                        conn.close(0u32.into(), b"path silent");
                        break Err(format!(
                            "tunnel to {peer} lost: no answer for {waited:?} to what we sent (a NAT on the path forgot the mapping?)"
                        ));
                    }
                    // quinn follows a peer whose NAT mapping changed (QUIC migration);
                    // report the new address and count the change.
                    let now = crate::socket::peer_addr(&conn);
                    let (offer, reported) = {
                        let p = lock(&shared.peer);
                        (p.offer.clone(), p.path)
                    };
                    let new_path = match (shared.role, offer) {
                        // The client's own upgrade reports itself; its address is aliased.
                        (Role::Client, _) | (_, None) => reported.unwrap_or(path),
                        (Role::Server, Some(o)) => shared.path_kind(&o, now),
                    };
                    if now != current || Some(new_path) != reported {
                        tracing::info!(old = %current, new = %now, path = new_path.as_str(), "tunnel path changed");
                        let span = tracing::Span::current();
                        span.record("peer", tracing::field::display(now));
                        span.record("path", new_path.as_str());
                        current = now;
                        shared.path_changes.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut p = lock(&shared.peer);
                            p.addr = Some(now);
                            p.path = Some(new_path);
                        }
                        let found = lock(&shared.peer).technique.unwrap_or(found);
                        shared.set_state(State::Connected {
                            path: new_path,
                            peer: now,
                            technique: technique(new_path, found),
                        });
                    }
                }
            }
        };
        shared.conn_tx.send_replace(None);
        conn_token.cancel();
        datagrams.abort();
        match outcome {
            Err(reason) => return reason,
            Ok(new_conn) => {
                tracing::info!(old = %peer, new = %crate::socket::peer_addr(&new_conn), "peer reconnected; switching tunnel");
                tracing::Span::current().record(
                    "peer",
                    tracing::field::display(crate::socket::peer_addr(&new_conn)),
                );
                conn.close(0u32.into(), b"replaced");
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                conn = new_conn;
            }
        }
    }
}

/// The technique to report for a tunnel on `path` whose path was found by `found`:
/// a relayed path is the relay's, whatever found it.
fn technique(path: PathKind, found: Technique) -> Technique {
    if path == PathKind::Relay {
        Technique::Relay
    } else {
        found
    }
}

/// While relayed, keeps probing the peer's direct candidates (2 s, 4 s, … 60 s apart).
/// When one answers straight back, the connection's packets are aliased to it: the
/// same QUIC connection carries on directly and the peer's side migrates to the new
/// path when our packets arrive on it. Live streams are not interrupted.
///
/// The client also probes, at once, every address the server's own probes come from
/// (peer-reflexive): behind a symmetric NAT the server is reached only there, as when
/// our router maps our port (its probes come in; ours to its STUN-mapped address never
/// get through its NAT).
pub(crate) async fn upgrade_to_direct(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    token: CancellationToken,
) {
    let Some(offer) = lock(&shared.peer).offer.clone() else {
        return;
    };
    let remote = punch::usable_candidates(shared.local_addr, path::direct_candidates(&offer));
    if remote.is_empty() || shared.config.relay_policy == RelayPolicy::Always {
        return;
    }
    let mut remote = remote;
    let client = shared.role == Role::Client;
    let (seen_tx, mut seen) = mpsc::channel(16);
    let listening = client.then(|| Reflexive::listen(&shared, &offer.id, &seen_tx));
    let mut schedule = UpgradeSchedule::default();
    loop {
        let sleep = tokio::time::sleep(schedule.next_wait());
        tokio::select! {
            _ = token.cancelled() => return,
            _ = sleep => {}
            Some(addr) = seen.recv() => {
                tracing::debug!(%addr, "the relayed peer's probe came from a new address: probing it");
                if !remote.contains(&addr) {
                    remote.push(addr);
                }
            }
        }
        while let Ok(addr) = seen.try_recv() {
            if !remote.contains(&addr) {
                remote.push(addr);
            }
        }
        if lock(&shared.peer).path != Some(PathKind::Relay) {
            // Moved off the relay meanwhile (birthday punching found a pair).
            return;
        }
        let punch = Punch {
            our_id: shared.our_id(),
            peer_id: offer.id.clone(),
            password: shared.password.clone(),
            checks: ChecklistConfig {
                remote: remote.clone(),
                timeout: UpgradeSchedule::PROBE_TIMEOUT,
                keep_going: false,
                direct: true,
                // No openers: a live relayed tunnel broke when its upgrade probes opened
                // with them (lab `relayed_tunnel_moves_to_direct_when_the_direct_path_opens`).
                opener: None,
            },
            straight: true,
        };
        // Addresses the server's probes come from while this round runs join it.
        let (tx, rx) = mpsc::channel(16);
        let round = client.then(|| Reflexive::listen(&shared, &offer.id, &tx));
        let found = punch.run(shared.agent.clone(), rx).await;
        drop(round);
        if let Some(l) = &listening {
            l.resume(&shared);
        }
        if shared.role == Role::Server {
            // The server's probes open its own NAT toward the client; the client moves
            // the connection, and we follow when its packets arrive directly.
            if lock(&shared.peer).path != Some(PathKind::Relay) {
                return;
            }
            continue;
        }
        if let Some(sel) = found {
            // Through a socket birthday punching or port prediction added, the path is
            // theirs (the probe only found it before their own report came).
            let side = shared.agent.socket().side_peer() == Some(sel.remote);
            let found_by = match *lock(&shared.side_technique) {
                Some(t) if side => t,
                _ => Technique::Checks,
            };
            switch_to_direct(&shared, &conn, sel.remote, found_by);
            return;
        }
    }
}

/// Where the responder reports the peer's checks from addresses we did not probe
/// (`Shared::prflx`) while a relayed tunnel looks for a direct path; taken back on drop.
struct Reflexive {
    shared: Arc<Shared>,
    peer_id: String,
    tx: mpsc::Sender<std::net::SocketAddr>,
}

impl Reflexive {
    fn listen(
        shared: &Arc<Shared>,
        peer_id: &str,
        tx: &mpsc::Sender<std::net::SocketAddr>,
    ) -> Reflexive {
        *lock(&shared.prflx) = Some((peer_id.to_owned(), tx.clone()));
        Reflexive {
            shared: shared.clone(),
            peer_id: peer_id.to_owned(),
            tx: tx.clone(),
        }
    }

    /// Reports go to this listener again (after a round's own listener was dropped).
    fn resume(&self, shared: &Shared) {
        *lock(&shared.prflx) = Some((self.peer_id.clone(), self.tx.clone()));
    }
}

impl Drop for Reflexive {
    fn drop(&mut self) {
        let mut prflx = lock(&self.shared.prflx);
        if prflx
            .as_ref()
            .is_some_and(|(_, tx)| tx.same_channel(&self.tx))
        {
            *prflx = None;
        }
    }
}

/// Moves the client's relayed tunnel to the direct pair ending at `remote`: the
/// connection's packets are aliased to it, so the same QUIC connection carries on
/// directly and the peer migrates when our packets arrive on the new path.
pub(crate) fn switch_to_direct(
    shared: &Shared,
    conn: &quinn::Connection,
    remote: std::net::SocketAddr,
    found_by: Technique,
) {
    let Some(offer) = lock(&shared.peer).offer.clone() else {
        return;
    };
    let conn_addr = crate::socket::peer_addr(conn);
    shared.agent.socket().alias(conn_addr, remote);
    let path = shared.path_kind(&offer, remote);
    tracing::info!(from = %conn_addr, to = %remote, technique = found_by.as_str(), "tunnel upgraded from relay to a direct path");
    // Called in the tunnel's span: later lines name the new path.
    let span = tracing::Span::current();
    span.record("peer", tracing::field::display(remote));
    span.record("path", path.as_str());
    shared.path_changes.fetch_add(1, Ordering::Relaxed);
    {
        let mut p = lock(&shared.peer);
        p.path = Some(path);
        p.addr = Some(remote);
        p.technique = Some(found_by);
    }
    shared.set_state(State::Connected {
        path,
        peer: remote,
        technique: technique(path, found_by),
    });
}

/// Declares a tunnel dead when something we sent that the peer must acknowledge has
/// gone unanswered for [`SILENT_LIMIT`] (or four round trips, if longer): QUIC answers
/// every ack-eliciting packet within a round trip plus its ACK delay, and a retransmit
/// after that, so a live path is never that quiet after a question. An idle tunnel
/// asks only with its keep-alives, so it is judged at the next one. Faster than the
/// idle timeout (15 s) after a NAT reboot that changed our public port.
///
/// Two mistakes, fixed, closed idle tunnels that were alive (with 100 idle clients,
/// about 30 "path silent" reconnects in 80 s):
/// * The ACK we send for the peer's keep-alive, 25 ms after it, counted as a
///   question, and nothing answers an ACK. Only ack-eliciting frames count now.
/// * The silence was timed from the last datagram heard, not from the question: a
///   keep-alive sent 5 s after the peer's last packet was taken for 5 s unanswered.
///   The wait is now timed from the first look that saw a question outstanding.
pub(crate) struct Liveness {
    heard: u64,
    asked_when_heard: u64,
    waiting_since: Option<tokio::time::Instant>,
    last_look: Option<tokio::time::Instant>,
}

/// A session's once-a-second look, on the same phase in every session of the process:
/// a server peer wakes once a second for all its clients, not once per client at a
/// phase of its own (#19, idle CPU with 100 clients). The first look comes within 1 s.
fn every_second() -> tokio::time::Interval {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let into_second = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .subsec_nanos();
    let first = Duration::from_secs(1) - Duration::from_nanos(u64::from(into_second));
    tokio::time::interval_at(tokio::time::Instant::now() + first, Duration::from_secs(1))
}

/// A look this long after the one before came late: the process was stalled (CPU
/// starvation, SIGSTOP, a debugger), and the answer may be waiting unread in the
/// socket. Such a look restarts the wait instead of judging it.
const LATE_LOOK: Duration = Duration::from_millis(1500);

/// Silence, while sending, after which a tunnel is taken for dead.
pub(crate) const SILENT_LIMIT: Duration = Duration::from_secs(2);

/// What [`Liveness`] reads of a connection: datagrams received, and frames sent that
/// the peer must acknowledge.
#[derive(Clone, Copy, Debug)]
struct Counts {
    heard: u64,
    asked: u64,
}

impl Counts {
    fn of(stats: &quinn::ConnectionStats) -> Counts {
        Counts {
            heard: stats.udp_rx.datagrams,
            asked: ack_eliciting(&stats.frame_tx),
        }
    }
}

/// Frames sent that make the peer answer with an ACK: all but ACK, PADDING (not
/// counted by quinn) and CONNECTION_CLOSE (RFC 9002, section 2).
fn ack_eliciting(f: &quinn::FrameStats) -> u64 {
    f.ack_frequency
        + f.crypto
        + f.data_blocked
        + f.datagram
        + u64::from(f.handshake_done)
        + f.immediate_ack
        + f.max_data
        + f.max_stream_data
        + f.max_streams_bidi
        + f.max_streams_uni
        + f.new_connection_id
        + f.new_token
        + f.path_challenge
        + f.path_response
        + f.ping
        + f.reset_stream
        + f.retire_connection_id
        + f.stream_data_blocked
        + f.streams_blocked_bidi
        + f.streams_blocked_uni
        + f.stop_sending
        + f.stream
}

impl Liveness {
    pub(crate) fn new(conn: &quinn::Connection) -> Liveness {
        Liveness::starting(Counts::of(&conn.stats()))
    }

    fn starting(c: Counts) -> Liveness {
        Liveness {
            heard: c.heard,
            asked_when_heard: c.asked,
            waiting_since: None,
            last_look: None,
        }
    }

    /// How long a question of ours has gone unanswered, once that is too long. Called
    /// about once a second, so the wait is counted from the look that first saw the
    /// question (up to a second after it was sent).
    pub(crate) fn dead(&mut self, conn: &quinn::Connection) -> Option<Duration> {
        let limit = SILENT_LIMIT.max(conn.rtt() * 4);
        self.observe(
            Counts::of(&conn.stats()),
            tokio::time::Instant::now(),
            limit,
        )
    }

    fn observe(
        &mut self,
        c: Counts,
        now: tokio::time::Instant,
        limit: Duration,
    ) -> Option<Duration> {
        let late = self
            .last_look
            .is_some_and(|t| now.duration_since(t) >= LATE_LOOK);
        if c.heard != self.heard {
            *self = Liveness::starting(c);
            self.last_look = Some(now);
            return None;
        }
        self.last_look = Some(now);
        if c.asked > self.asked_when_heard && (late || self.waiting_since.is_none()) {
            self.waiting_since = Some(now);
        }
        let waited = now.duration_since(self.waiting_since?);
        (waited >= limit).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn counts(heard: u64, asked: u64) -> Counts {
        Counts { heard, asked }
    }

    /// Sessions started at different moments look at the same phase of the second, so
    /// a server with many clients wakes once for all of them.
    #[tokio::test]
    async fn every_session_looks_on_the_same_phase() {
        let mut first = every_second();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut second = every_second();
        let (a, b) = (first.tick().await, second.tick().await);
        let apart = b.duration_since(a).as_nanos() % 1_000_000_000;
        let off = Duration::from_nanos(apart.min(1_000_000_000 - apart) as u64);
        assert!(
            off < Duration::from_millis(10),
            "the two sessions' looks are {off:?} out of phase"
        );
    }

    /// What counts is a question left unanswered: not our ACKs, and not the quiet
    /// before the question.
    #[test]
    fn only_an_unanswered_question_counts() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Liveness::starting(counts(10, 5));
        // Nothing asked: any silence is fine (an idle tunnel between keep-alives).
        for ms in [1_000, 2_000, 3_000, 4_000] {
            assert_eq!(l.observe(counts(10, 5), at(ms), SILENT_LIMIT), None);
        }
        // A keep-alive after 4 s of quiet: the wait starts now, not at the last
        // datagram heard.
        assert_eq!(l.observe(counts(10, 6), at(5_000), SILENT_LIMIT), None);
        assert_eq!(l.observe(counts(10, 7), at(6_000), SILENT_LIMIT), None);
        assert_eq!(l.observe(counts(10, 7), at(6_900), SILENT_LIMIT), None);
        // Unanswered for 2 s: dead, and how long it waited.
        assert_eq!(
            l.observe(counts(10, 7), at(7_000), SILENT_LIMIT),
            Some(Duration::from_secs(2))
        );
        // Heard something: nothing is outstanding any more.
        for ms in (8_000..=20_000).step_by(1_000) {
            assert_eq!(l.observe(counts(11, 7), at(ms), SILENT_LIMIT), None);
        }
        // A longer limit (four round trips on a slow path) is honoured.
        let slow = Duration::from_secs(3);
        for ms in [21_000, 22_000, 23_000, 23_900] {
            assert_eq!(l.observe(counts(11, 8), at(ms), slow), None);
        }
        assert_eq!(l.observe(counts(11, 8), at(24_000), slow), Some(slow));
        // A look that comes late (the process stalled) restarts the wait: the answer
        // may be in the socket, unread.
        let mut l = Liveness::starting(counts(20, 1));
        assert_eq!(l.observe(counts(20, 2), at(1_000), SILENT_LIMIT), None);
        assert_eq!(l.observe(counts(20, 2), at(2_000), SILENT_LIMIT), None);
        assert_eq!(l.observe(counts(20, 2), at(6_000), SILENT_LIMIT), None);
        assert_eq!(l.observe(counts(20, 2), at(7_000), SILENT_LIMIT), None);
        assert_eq!(
            l.observe(counts(20, 2), at(8_000), SILENT_LIMIT),
            Some(Duration::from_secs(2))
        );
    }

    /// On a real connection: a peer that receives an ack-eliciting frame answers with
    /// an ACK that grows its datagrams sent but not what [`Counts`] calls asking, so
    /// that peer's [`Liveness`] does not wait for an answer to its ACK.
    #[tokio::test(flavor = "current_thread")]
    async fn answering_with_an_ack_is_not_asking() {
        let (server_config, client_config) = crate::tunnel::pinned_configs();
        let loopback = "127.0.0.1:0".parse().expect("addr");
        let server = quinn::Endpoint::server(server_config, loopback).expect("server endpoint");
        let mut client = quinn::Endpoint::client(loopback).expect("client endpoint");
        client.set_default_client_config(client_config);
        let to = server.local_addr().expect("addr");
        let (accepted, connected) = tokio::join!(
            async {
                server
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("accept")
            },
            async {
                client
                    .connect(to, crate::tunnel::SERVER_NAME)
                    .expect("connect")
                    .await
                    .expect("handshake")
            },
        );
        // Let the handshake's last frames (HANDSHAKE_DONE, connection IDs) and their
        // ACKs settle: until the server has sent nothing new for 200 ms.
        let settled = |c: &quinn::Connection| c.stats().udp_tx.datagrams;
        let mut last = settled(&accepted);
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = settled(&accepted);
            if now == last {
                break;
            }
            last = now;
        }
        let before = accepted.stats();
        let mut liveness = Liveness::starting(Counts::of(&before));
        connected
            .send_datagram(bytes::Bytes::from_static(b"ack me"))
            .expect("datagram");
        let got = tokio::time::timeout(Duration::from_secs(5), accepted.read_datagram())
            .await
            .expect("datagram within 5 s")
            .expect("datagram");
        assert_eq!(&got[..], b"ack me");
        // The server's ACK goes out within its ACK delay (25 ms).
        let mut after = accepted.stats();
        for _ in 0..100 {
            if after.udp_tx.datagrams > before.udp_tx.datagrams {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            after = accepted.stats();
        }
        assert!(
            after.udp_tx.datagrams > before.udp_tx.datagrams,
            "the server acknowledged the datagram"
        );
        assert!(
            after.frame_tx.acks > before.frame_tx.acks,
            "with an ACK frame"
        );
        assert_eq!(
            Counts::of(&after).asked,
            Counts::of(&before).asked,
            "an ACK alone is not asking"
        );
        // The race that closed idle tunnels: the once-a-second look falls after the
        // datagram arrived and before the ACK left. However long the silence after,
        // the server is not waiting for anything.
        let t = Instant::now();
        let between = Counts {
            heard: Counts::of(&after).heard,
            asked: Counts::of(&before).asked,
        };
        assert_eq!(liveness.observe(between, t, SILENT_LIMIT), None);
        assert_eq!(
            liveness.observe(
                Counts::of(&after),
                t + Duration::from_secs(10),
                SILENT_LIMIT
            ),
            None,
            "an idle tunnel that answered with an ACK is not dead"
        );
        connected.close(0u32.into(), b"done");
        server.wait_idle().await;
    }
}

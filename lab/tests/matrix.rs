//! The traversal matrix. A cell is (server-side site, client-side site, STUN set-up,
//! relay configured or not); each cell builds one lab world and runs R repetitions in
//! it, each with fresh engines and a fresh room. Per cell it records successes,
//! median and worst time to first byte (from starting the client engine until the
//! first byte echoed through the tunnel arrives), the paths, the NAT types the
//! engines detected and the first failure. Targets (issue #16) are checked in
//! [`check_targets`]; times are printed, never asserted.
//!
//!   cargo test -p stunfwd-lab --test matrix -- --nocapture
//!
//! Environment: `STUNFWD_MATRIX_RUNS` (R, default 2), `STUNFWD_MATRIX_HOPELESS_RUNS`
//! (runs of hopeless cells without a relay, default R), `STUNFWD_MATRIX_FILTER`
//! (comma-separated substrings of cell names such as
//! `linux-masquerade~linux-masquerade/no-relay/plain`), `STUNFWD_MATRIX_PARALLEL`
//! (labs at a time, default 3), `STUNFWD_MATRIX_BIRTHDAY` (`SOCKETS,PROBES`: birthday
//! punching's budget), `STUNFWD_MATRIX_LOG` (a level: print the engines' logs), `STUNFWD_MATRIX_PUNCH_TTL` (`performance.punchTtl`
//! of every engine; 0 turns punching's openers off), `STUNFWD_WRITE_MATRIX=1` (write
//! docs/nat-matrix.md).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::{Device, Router};
use stunfwd_core::{Engine, PathKind, State};
use stunfwd_lab::miniupnpd::Service;
use stunfwd_lab::*;

/// How long one run may take before it counts as failed.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// The most a cell that is not hopeless may take, median, to its first byte.
const MAX_MEDIAN_TTFB: Duration = Duration::from_secs(3);
/// The most conntrack entries a connect without birthday punching may leave on a NAT
/// router.
const MAX_EASY_ENTRIES: usize = 16;
/// A hopeless cell without a relay must report its failure within this.
const FAIL_FAST: Duration = Duration::from_secs(20);

/// One side of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A site behind one NAT of this kind.
    Nat(NatKind),
    /// A port-restricted home router behind a port-restricted CGNAT (100.64/10).
    Double,
    /// Both peers behind one port-restricted NAT, hairpinning on or off.
    SameNat { hairpin: bool },
    /// Dual-stack (issue #17): IPv4 behind a NAT of this kind, and a global IPv6
    /// address behind a stateful firewall that lets in only return traffic.
    V6(NatKind),
    /// A NAT of this kind whose router maps ports (miniupnpd) with this protocol.
    Mapped(NatKind, Service),
}

impl Side {
    fn name(self) -> String {
        match self {
            Side::Nat(k) => k.name().to_owned(),
            Side::Double => "double-nat".into(),
            Side::SameNat { hairpin: true } => "same-nat-hairpin".into(),
            Side::SameNat { hairpin: false } => "same-nat-no-hairpin".into(),
            Side::V6(k) => format!("{}+v6", k.name()),
            Side::Mapped(k, s) => format!("{}+{}", k.name(), s.name()),
        }
    }

    fn v6(self) -> bool {
        matches!(self, Side::V6(_))
    }

    /// The NAT type an RFC 5780 test finds on this side; behind a router that maps our
    /// port, the type the engine offers (anyone reaches the mapped port).
    fn nat_type(self) -> &'static str {
        match self {
            Side::Nat(k) | Side::V6(k) => k.expected_type(),
            Side::Mapped(..) => "full-cone",
            Side::Double | Side::SameNat { .. } => "port-restricted",
        }
    }

    fn symmetric(self) -> bool {
        self.nat_type() == "symmetric"
    }

    /// A symmetric NAT that allocates ports regularly (sequential or port-preserving):
    /// port prediction's kind.
    fn regular(self) -> bool {
        matches!(
            self,
            Side::Nat(NatKind::SymmetricSequential | NatKind::SymmetricPreserving)
        )
    }

    fn spec(self, name: &str) -> SiteSpec {
        match self {
            Side::Nat(k) => SiteSpec::new(name, k),
            Side::Double => {
                SiteSpec::new(name, NatKind::PortRestricted).behind_cgnat(NatKind::PortRestricted)
            }
            Side::SameNat { hairpin } => SiteSpec::new(name, NatKind::PortRestricted)
                .devices(2)
                .hairpin(hairpin),
            Side::V6(k) => SiteSpec::new(name, k).ipv6(true),
            Side::Mapped(k, s) => SiteSpec::new(name, k).port_mapper(s),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CellSpec {
    server: Side,
    client: Side,
    stun: StunSetup,
    relay: bool,
}

impl CellSpec {
    fn name(&self) -> String {
        format!(
            "{}~{}/{}/{}",
            self.server.name(),
            self.client.name(),
            if self.relay { "relay" } else { "no-relay" },
            self.stun.name()
        )
    }

    /// Both sides have global IPv6 (issue #17): the tunnel must run over it.
    fn both_v6(&self) -> bool {
        self.server.v6() && self.client.v6()
    }

    /// One router maps ports (miniupnpd).
    fn mapped(&self) -> bool {
        matches!(self.server, Side::Mapped(..)) || matches!(self.client, Side::Mapped(..))
    }

    fn same_nat(&self) -> bool {
        matches!(self.server, Side::SameNat { .. })
    }

    /// "Hopeless" (issue #17): symmetric on both sides, unless both allocate ports
    /// regularly and STUN can tell the engines their NATs are symmetric (RFC 5780 or
    /// two servers): port prediction's cells. With one plain STUN server an engine
    /// cannot tell a symmetric NAT from a cone, so it never tries prediction. A
    /// symmetric NAT with a port-restricted one (a Linux masquerade router and double
    /// NAT are port-restricted) is birthday punching's cell. Never when both sides
    /// have IPv6: firewalls without NAT are punched whatever the IPv4 NATs are.
    fn hopeless(&self) -> bool {
        let (a, b) = (self.server, self.client);
        if self.both_v6() {
            return false;
        }
        let predicted = a.regular() && b.regular() && self.stun == StunSetup::Rfc5780;
        !self.same_nat() && a.symmetric() && b.symmetric() && !predicted
    }
}

/// One repetition.
#[derive(Debug, Clone)]
struct Run {
    /// The first byte came back and a 64 KiB echo after it was intact.
    ok: bool,
    ttfb: Option<Duration>,
    path: Option<PathKind>,
    /// The client's peer address at the end of the run was IPv6.
    over_v6: bool,
    /// NAT types the engines reported (server, client).
    detected: (String, String),
    /// The first failure the client reported (state reason or wait error), and when.
    failure: Option<(String, Duration)>,
    detail: String,
    /// A first byte over the relay, then the client's path turned direct: when, from
    /// the start of the client.
    upgrade: Option<Duration>,
    /// UDP conntrack entries on the server's and the client's NAT router (the most of
    /// any one router of the site) once connected: what one connect costs.
    conntrack: (usize, usize),
    /// Packets birthday punching sent (both peers); sockets it opened.
    birthday: (u64, u64),
    /// How the client's path was found (its state's technique) at the end.
    technique: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct Cell {
    spec: CellSpec,
    runs: Vec<Run>,
    /// Why the cell could not be measured at all (lab set-up failed).
    setup_error: Option<String>,
}

impl Cell {
    fn successes(&self) -> usize {
        self.runs.iter().filter(|r| r.ok).count()
    }

    fn ttfbs(&self) -> Vec<f64> {
        let mut t: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| r.ttfb)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        t
    }

    /// Median of the ok runs' values.
    fn median_of(&self, f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self.runs.iter().filter(|r| r.ok).filter_map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    fn techniques(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.runs.iter().filter(|r| r.ok) {
            if let Some(t) = r.technique {
                *m.entry(t.to_owned()).or_insert(0) += 1;
            }
        }
        m
    }

    fn paths(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.runs.iter().filter(|r| r.ok) {
            if let Some(p) = r.path {
                let key = if r.over_v6 {
                    format!("{} over IPv6", p.as_str())
                } else {
                    p.as_str().to_owned()
                };
                *m.entry(key).or_insert(0) += 1;
            }
        }
        m
    }
}

/// Runs of a hopeless cell without a relay: each spends a whole punch timeout (10 s)
/// failing, and what it shows (it fails, clearly, in time) needs fewer repetitions
/// than a success rate does. `STUNFWD_MATRIX_HOPELESS_RUNS`, default R.
fn hopeless_runs(runs: usize) -> usize {
    std::env::var("STUNFWD_MATRIX_HOPELESS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(runs)
        .min(runs)
}

fn runs_per_cell() -> usize {
    std::env::var("STUNFWD_MATRIX_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

fn all_cells() -> Vec<CellSpec> {
    let mut sides: Vec<(Side, Side)> = Vec::new();
    for (i, a) in NatKind::ALL.iter().enumerate() {
        for b in &NatKind::ALL[i..] {
            sides.push((Side::Nat(*a), Side::Nat(*b)));
        }
    }
    for a in NatKind::ALL {
        sides.push((Side::Nat(a), Side::Double));
    }
    sides.push((Side::Double, Side::Double));
    for hairpin in [true, false] {
        sides.push((Side::SameNat { hairpin }, Side::SameNat { hairpin }));
    }
    // IPv6 behind firewalls (issue #17): both sides dual-stack (also with symmetric
    // IPv4 NATs, hopeless over IPv4), and one side IPv4 only.
    let pr = NatKind::PortRestricted;
    sides.push((Side::V6(pr), Side::V6(pr)));
    sides.push((Side::V6(NatKind::Symmetric), Side::V6(NatKind::Symmetric)));
    sides.push((Side::V6(pr), Side::Nat(pr)));
    // One router maps ports (issue #17): the pairs that are hopeless without it.
    for s in Service::ALL {
        sides.push((
            Side::Mapped(NatKind::PortRestricted, s),
            Side::Nat(NatKind::Symmetric),
        ));
        sides.push((
            Side::Nat(NatKind::Symmetric),
            Side::Mapped(NatKind::Symmetric, s),
        ));
    }
    let mut cells = Vec::new();
    for relay in [false, true] {
        for stun in StunSetup::ALL {
            for (server, client) in &sides {
                cells.push(CellSpec {
                    server: *server,
                    client: *client,
                    stun,
                    relay,
                });
            }
        }
    }
    cells
}

fn selected(cells: Vec<CellSpec>) -> Vec<CellSpec> {
    let Ok(filter) = std::env::var("STUNFWD_MATRIX_FILTER") else {
        return cells;
    };
    let parts: Vec<&str> = filter.split(',').filter(|p| !p.is_empty()).collect();
    cells
        .into_iter()
        .filter(|c| parts.iter().any(|p| c.name().contains(p)))
        .collect()
}

async fn stop_engine(engine: Arc<Engine>) {
    let _ = tokio::task::spawn_blocking(move || engine.stop(Duration::from_secs(2))).await;
}

/// One repetition: fresh engines, fresh room.
/// Most UDP conntrack entries on any one of `routers`.
async fn udp_entries(routers: &[Router]) -> anyhow::Result<usize> {
    let mut most = 0;
    for r in routers {
        most = most.max(conntrack_udp(r, None, None).await?.len());
    }
    Ok(most)
}

/// Forgets every conntrack entry of `routers` (the last run's engines are gone).
async fn flush(routers: &[Router]) -> anyhow::Result<()> {
    for r in routers {
        router_output(r, "conntrack", &["-F"]).await?;
    }
    Ok(())
}

/// How long a run whose first byte went over the relay waits for the client's path
/// to turn direct.
const UPGRADE_WAIT: Duration = Duration::from_secs(10);

async fn run_once(
    world: &World,
    spec: &CellSpec,
    (sdev, cdev): (&Device, &Device),
    (srouters, crouters): (&[Router], &[Router]),
    echo: u16,
    rep: usize,
) -> anyhow::Result<Run> {
    // Each run starts from empty connection tables, so the entries counted once it is
    // connected are this connect's.
    flush(srouters).await?;
    flush(crouters).await?;
    let room = format!("matrix-{}-{rep}", world.id());
    let mut extra = if spec.relay {
        serde_json::json!({ "relay": world.relay_json() })
    } else {
        serde_json::json!({})
    };
    // `STUNFWD_MATRIX_PUNCH_TTL=0` runs the matrix without punching's openers (to show
    // which cells they fix).
    if let Some(ttl) = std::env::var("STUNFWD_MATRIX_PUNCH_TTL")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
    {
        extra["performance"] = serde_json::json!({ "punchTtl": ttl });
    }
    // `STUNFWD_MATRIX_BIRTHDAY=SOCKETS,PROBES` sets birthday punching's budget (to
    // measure the success rate against it).
    if let Some((sockets, probes)) = std::env::var("STUNFWD_MATRIX_BIRTHDAY").ok().and_then(|v| {
        let (a, b) = v.split_once(',')?;
        Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
    }) {
        if !extra["performance"].is_object() {
            extra["performance"] = serde_json::json!({});
        }
        extra["performance"]["birthdaySockets"] = sockets.into();
        extra["performance"]["birthdayProbes"] = probes.into();
    }
    let server = Arc::new(start_engine(
        sdev,
        world.config_with(spec.stun, "server", &room, extra.clone()),
    )?);
    let mut cextra = extra;
    cextra["mappings"] = serde_json::json!([format!("tcp:0:{echo}")]);
    let config = world.config_with(spec.stun, "client", &room, cextra);
    let started = Instant::now();
    let client = Arc::new(start_engine(cdev, config)?);
    let port = client.mappings()[0].listen.port();
    let stop = Arc::new(AtomicBool::new(false));
    let fb = {
        let (cdev, stop) = (cdev.clone(), stop.clone());
        tokio::spawn(
            async move { first_byte(&cdev, port, started, started + RUN_DEADLINE, stop).await },
        )
    };
    // Watch the client's state meanwhile: the first failure it reports, and whether
    // it gave up for good.
    let mut failure: Option<(String, Duration)> = None;
    while !fb.is_finished() {
        match client.state() {
            State::Reconnecting { reason, .. } | State::Failed { reason } if failure.is_none() => {
                failure = Some((reason, started.elapsed()));
            }
            _ => {}
        }
        let final_failure = matches!(client.state(), State::Failed { .. });
        // A hopeless cell without relay has shown what it does once it fails.
        if final_failure || (failure.is_some() && spec.hopeless() && !spec.relay) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ttfb = fb.await??;
    let state = client.state();
    let path = match &state {
        State::Connected { path, .. } => Some(*path),
        _ => client.stats().path,
    };
    let (ok, detail) = match ttfb {
        Some(_) => {
            let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
            match echo_through(cdev, port, data, Duration::from_secs(10)).await {
                Ok(()) => (true, "64 KiB echo intact".to_owned()),
                Err(e) => (
                    false,
                    format!("first byte came back but 64 KiB echo failed: {e}"),
                ),
            }
        }
        None => {
            let stats = client.stats();
            let why = match &failure {
                Some((reason, at)) => format!("{reason} (after {} ms)", at.as_millis()),
                None => format!(
                    "no byte within {} s; state {state}; last error {:?}",
                    RUN_DEADLINE.as_secs(),
                    stats.last_error
                ),
            };
            (false, why)
        }
    };
    // Over the relay first: the upgrade to a direct path is timed on its own (not in
    // hopeless cells, which stay relayed).
    let mut upgrade = None;
    if ok && path == Some(PathKind::Relay) && !spec.hopeless() {
        let until = Instant::now() + UPGRADE_WAIT;
        while Instant::now() < until {
            if let State::Connected {
                path: PathKind::Direct,
                ..
            } = client.state()
            {
                upgrade = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Counted once connected (and upgraded): every entry the connect made.
    let conntrack = if same_site(srouters, crouters) {
        let n = udp_entries(srouters).await?;
        (n, n)
    } else {
        (udp_entries(srouters).await?, udp_entries(crouters).await?)
    };
    let technique = match client.state() {
        State::Connected { technique, .. } => Some(technique.as_str()),
        _ => None,
    };
    let (ss, cs) = (server.stats(), client.stats());
    let birthday = (
        ss.birthday_packets + cs.birthday_packets,
        ss.birthday_sockets + cs.birthday_sockets,
    );
    let detected = (
        ss.nat_type.as_str().to_owned(),
        cs.nat_type.as_str().to_owned(),
    );
    let over_v6 = client.stats().peer_addr.is_some_and(|a| a.is_ipv6());
    stop_engine(client).await;
    stop_engine(server).await;
    Ok(Run {
        ok,
        ttfb,
        path,
        over_v6,
        detected,
        failure,
        detail,
        upgrade,
        conntrack,
        birthday,
        technique,
    })
}

fn same_site(a: &[Router], b: &[Router]) -> bool {
    a.first().map(|r| r.name()) == b.first().map(|r| r.name())
}

async fn measure(spec: CellSpec, runs: usize) -> Cell {
    let mut cell = Cell {
        spec,
        runs: Vec::new(),
        setup_error: None,
    };
    let result = async {
        let world = World::new(WorldOptions::default()).await?;
        let routers = |s: &Site| -> Vec<Router> { s.nat_routers().into_iter().cloned().collect() };
        // The sites live as long as the cell: a site's miniupnpd stops with it.
        let (sdev, cdev, srouters, crouters, _sites) = if spec.same_nat() {
            let site = world.add_site(spec.server.spec("lan")).await?;
            let r = routers(&site);
            (
                site.devices[0].clone(),
                site.devices[1].clone(),
                r.clone(),
                r,
                vec![site],
            )
        } else {
            let s = world.add_site(spec.server.spec("ss")).await?;
            let c = world.add_site(spec.client.spec("cc")).await?;
            (
                s.devices[0].clone(),
                c.devices[0].clone(),
                routers(&s),
                routers(&c),
                vec![s, c],
            )
        };
        let echo = tcp_echo(&sdev).await?;
        for rep in 0..runs {
            cell.runs.push(
                run_once(
                    &world,
                    &spec,
                    (&sdev, &cdev),
                    (&srouters, &crouters),
                    echo,
                    rep,
                )
                .await?,
            );
        }
        drop(world);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        cell.setup_error = Some(format!("{e:#}"));
    }
    cell
}

fn table(cells: &[&Cell]) -> String {
    let mut out = String::from(
        "| server site | client site | success | median ms | worst ms | paths | found by | upgrade to direct, median ms | conntrack entries per router (server/client), median | birthday packets / sockets, median | detected (server/client) | detail |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let t = c.ttfbs();
        let fmt = |v: Option<&f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        let median = match t.len() {
            0 => None,
            n if n % 2 == 1 => Some(t[n / 2]),
            n => Some((t[n / 2 - 1] + t[n / 2]) / 2.0),
        };
        let paths = c
            .paths()
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut detected: Vec<String> = c
            .runs
            .iter()
            .map(|r| format!("{}/{}", r.detected.0, r.detected.1))
            .collect();
        detected.dedup();
        let detail = c
            .setup_error
            .clone()
            .or_else(|| c.runs.iter().find(|r| !r.ok).map(|r| r.detail.clone()))
            .unwrap_or_else(|| "64 KiB echo intact".into());
        let (server, client) = match c.spec.server {
            Side::SameNat { hairpin } => {
                let s = format!("same NAT, hairpin {}", if hairpin { "on" } else { "off" });
                (s.clone(), s)
            }
            _ => (c.spec.server.name(), c.spec.client.name()),
        };
        let join = |m: BTreeMap<String, usize>| {
            let s = m
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            if s.is_empty() {
                "-".to_owned()
            } else {
                s
            }
        };
        let upgrades = c.runs.iter().filter(|r| r.upgrade.is_some()).count();
        let upgrade = match c.median_of(|r| r.upgrade.map(|d| d.as_secs_f64() * 1000.0)) {
            Some(m) => format!("{m:.0} ({upgrades} runs)"),
            None => "-".into(),
        };
        let entries = match (
            c.median_of(|r| Some(r.conntrack.0 as f64)),
            c.median_of(|r| Some(r.conntrack.1 as f64)),
        ) {
            (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
            _ => "-".into(),
        };
        let birthday = match (
            c.median_of(|r| Some(r.birthday.0 as f64)),
            c.median_of(|r| Some(r.birthday.1 as f64)),
        ) {
            (Some(p), Some(s)) if p > 0.0 => format!("{p:.0} / {s:.0}"),
            (Some(_), Some(_)) => "0".into(),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {server} | {client} | {}/{} | {} | {} | {} | {} | {upgrade} | {entries} | {birthday} | {} | {} |\n",
            c.successes(),
            c.runs.len(),
            fmt(median.as_ref()),
            fmt(t.last()),
            if paths.is_empty() { "-".into() } else { paths },
            join(c.techniques()),
            detected.join(", "),
            detail.replace('|', "/").replace('\n', " "),
        ));
    }
    out
}

/// The targets. Returns every violation (empty when all are met).
///
/// - Every cell that is not hopeless connects in at least R − ⌈R/20⌉ runs (19 of 20;
///   2 of CI's 3).
/// - With a relay configured every cell connects as often; hopeless cells go through
///   the relay. Other cells may use the relay or a direct path (the relay is checked
///   in parallel).
/// - Without a relay, cells that are not hopeless connect directly; hopeless cells
///   never connect and report their failure (a state reason) within [`FAIL_FAST`],
///   not after a hang.
/// - Two peers behind one NAT connect on the LAN path.
/// - Issue #17: with a relay, a cell that is not hopeless (port-mapped ones too)
///   ends on a direct path in as many runs (its first byte may go over the relay; the upgrade is timed); the
///   median time to first byte of a cell that is not hopeless is at most
///   [`MAX_MEDIAN_TTFB`]; a connect that needs no birthday punching costs each NAT
///   router at most [`MAX_EASY_ENTRIES`] conntrack entries.
fn check_targets(cells: &[Cell], runs: usize) -> Vec<String> {
    // 19 of 20, as the issue asks: one miss in 20 runs, and one in CI's 3 runs (a
    // cell that works 19 times in 20 misses one of 3 runs 14 % of the time; across the
    // ~60 cells held to it, a no-miss rule would fail CI on chance, not on a
    // regression; 1 of 3 still fails). docs/nat-matrix.md holds the 20-run figures.
    let need = runs - runs.div_ceil(20);
    let mut bad = Vec::new();
    for c in cells {
        let name = c.spec.name();
        if let Some(e) = &c.setup_error {
            bad.push(format!("{name}: lab set-up failed: {e}"));
            continue;
        }
        let ok = c.successes();
        let paths: Vec<Option<PathKind>> = c.runs.iter().filter(|r| r.ok).map(|r| r.path).collect();
        let first_failure = c
            .runs
            .iter()
            .find(|r| !r.ok)
            .map(|r| r.detail.clone())
            .unwrap_or_default();
        let connects = |bad: &mut Vec<String>| {
            if ok < need {
                bad.push(format!(
                    "{name}: {ok}/{runs} connected (need {need}): {first_failure}"
                ));
            }
        };
        // Issue #17: with IPv6 on both sides the tunnel runs on it, directly, relay or
        // not; with one side IPv4 only, over IPv4 (through the relay too when one
        // is configured: it is checked in parallel).
        if c.spec.server.v6() || c.spec.client.v6() {
            let want_v6 = c.spec.both_v6();
            let relay_ok = c.spec.relay && !want_v6;
            for r in c.runs.iter().filter(|r| r.ok) {
                let path_ok = r.path == Some(PathKind::Direct)
                    || (relay_ok && r.path == Some(PathKind::Relay));
                if r.over_v6 != want_v6 || !path_ok {
                    bad.push(format!(
                        "{name}: wanted a direct path over IPv{}, got {:?} over IPv{}",
                        if want_v6 { 6 } else { 4 },
                        r.path,
                        if r.over_v6 { 6 } else { 4 }
                    ));
                }
            }
        }
        let only = |bad: &mut Vec<String>, path: PathKind, why: &str| {
            if paths.iter().any(|p| *p != Some(path)) {
                bad.push(format!("{name}: {why} ({} path): {paths:?}", path.as_str()));
            }
        };
        // Port-mapped cells are not held to it: a mapping that arrives after the first
        // offer costs an attempt (docs/architecture.md).
        if !c.spec.hopeless() && !c.spec.mapped() {
            if let Some(m) = c.median_of(|r| r.ttfb.map(|d| d.as_secs_f64() * 1000.0)) {
                if m > MAX_MEDIAN_TTFB.as_secs_f64() * 1000.0 {
                    bad.push(format!("{name}: median time to first byte {m:.0} ms"));
                }
            }
        }
        // One connect's entries on a router of its own: not two peers behind one NAT
        // (both peers' flows), not with a relay or a port mapper or IPv6 (their own
        // flows: TURN, PCP/NAT-PMP/UPnP probes, IPv6 entries).
        let plain_cell = !c.spec.same_nat()
            && !c.spec.relay
            && !c.spec.mapped()
            && !c.spec.server.v6()
            && !c.spec.client.v6();
        for r in c
            .runs
            .iter()
            .filter(|r| plain_cell && r.ok && r.birthday.0 == 0)
        {
            if r.conntrack.0 > MAX_EASY_ENTRIES || r.conntrack.1 > MAX_EASY_ENTRIES {
                bad.push(format!(
                    "{name}: a connect without birthday punching left {:?} conntrack entries (server, client router)",
                    r.conntrack
                ));
            }
        }
        if c.spec.same_nat() {
            connects(&mut bad);
            only(&mut bad, PathKind::Lan, "peers behind one NAT use the LAN");
        } else if c.spec.relay {
            connects(&mut bad);
            if c.spec.hopeless() {
                only(&mut bad, PathKind::Relay, "a hopeless cell uses the relay");
            } else {
                let direct = c
                    .runs
                    .iter()
                    .filter(|r| r.ok && (r.path != Some(PathKind::Relay) || r.upgrade.is_some()))
                    .count();
                if direct < need {
                    bad.push(format!(
                        "{name}: only {direct}/{runs} runs ended on a direct path"
                    ));
                }
            }
        } else if c.spec.hopeless() {
            if ok > 0 {
                bad.push(format!(
                    "{name}: a hopeless cell connected {ok} times without a relay"
                ));
            }
            for r in c.runs.iter().filter(|r| !r.ok) {
                let Some((reason, at)) = &r.failure else {
                    bad.push(format!("{name}: no failure reported: {}", r.detail));
                    continue;
                };
                if *at > FAIL_FAST {
                    bad.push(format!(
                        "{name}: failed only after {} ms: {reason}",
                        at.as_millis()
                    ));
                }
            }
        } else {
            connects(&mut bad);
            only(
                &mut bad,
                PathKind::Direct,
                "without a relay the path is direct",
            );
        }
    }
    bad
}

fn heading(stun: StunSetup, relay: bool) -> String {
    format!(
        "{} STUN, {}",
        match stun {
            StunSetup::Rfc5780 => "RFC 5780 (coturn's two addresses)",
            StunSetup::Plain => "plain (one server without RFC 5780)",
        },
        if relay {
            "coturn configured as relay (`relayPolicy: auto`)"
        } else {
            "no relay"
        }
    )
}

fn write_doc(tables: &str, runs: usize, took: Duration) {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let doc = format!(
        "# NAT traversal matrix\n\n\
         Measured on {date} on a 2-core machine with \
         `STUNFWD_MATRIX_RUNS={runs} STUNFWD_WRITE_MATRIX=1 cargo test -p stunfwd-lab --test matrix -- --nocapture` \
         ({runs} runs per cell, {:.0} min in all).\n\n\
         **Topology.** Each cell is one lab world (Linux network namespaces, nftables NATs built with patchbay plus raw \
         nftables for the kinds patchbay lacks): every site's NAT router sits behind its own ISP router on an IX that \
         routes, so between two sites' NAT routers a packet crosses three routers that decrement its TTL (ISP, IX, ISP). \
         Double NAT is a port-restricted home router behind a port-restricted CGNAT in 100.64.0.0/10. The servers \
         (our rendezvous server with its plain STUN responder, and coturn started from the README's command) sit behind \
         a public router on the same IX.\n\n\
         **NAT kinds.** full-cone, address-restricted, port-restricted and symmetric are patchbay's; linux-masquerade is \
         nftables `masquerade` with no input filter (packets for the router's closed ports leave UNREPLIED conntrack \
         entries, issue #16); symmetric-sequential hands out consecutive ports; symmetric-preserving keeps the port for \
         the first destination only. A `+v6` site is dual-stack (issue #17): IPv4 behind the NAT named, and a global \
         IPv6 address (2001:db8:1:N::/64) behind a stateful firewall on the same router that forwards only return \
         traffic (no NAT66); paths marked `over IPv6` ran on it.\n\n\
         **A run.** Fresh engines and a fresh room in the cell's world: the server peer has a TCP echo service, the \
         client peer forwards a local port to it. Time to first byte is measured from starting the client engine until \
         one byte written to the forwarded port comes back echoed through the tunnel; a run succeeds when it does \
         within {} s and a 64 KiB echo after it is intact. Paths are what the client used at its first byte; \
         \"found by\" is the technique its state named at the end of the run (`checks`, `birthday`, `prediction`, `relay`; issue #17, \
         `docs/architecture.md`). When the first byte went over the relay in a cell that is not hopeless, the run waits \
         up to 10 s for the client's path to turn direct and the upgrade is timed from the client's start. Conntrack \
         entries are the UDP entries on the busiest NAT router of each site once connected (every table is flushed \
         before a run), so they are what one connect costs; birthday packets and sockets are both peers' together. \
         Without a relay, hopeless cells (symmetric with symmetric, but for two regular symmetric NATs under RFC 5780 STUN, which port prediction connects) stop at their first reported failure, and \
         run {} times each (`STUNFWD_MATRIX_HOPELESS_RUNS`): each run spends a whole punch timeout failing.\n\n{tables}\n\
         **The detected column** is what each engine reported right after the run's first byte. The quick types \
         (`cone`, `nat`, `symmetric`: servers compared, one round trip) are what an engine knows when it connects; \
         the RFC 5780 types (`full-cone`, `port-restricted`, ...) come from the background detection about 1.8 s \
         later, so a run that connects first shows the quick type. patchbay's address-restricted NAT keeps one set of \
         contacted addresses per router rather than per mapping, so once an engine's quick discovery has contacted \
         coturn's second address its background test sees that address let in and reports full-cone; on a real \
         per-mapping NAT the fresh socket of the background test would not be confounded (`lab/tests/nat_kinds.rs` \
         checks detection on a fresh NAT). Runs of a cell share its NATs (one world per cell).\n",
        took.as_secs_f64() / 60.0,
        RUN_DEADLINE.as_secs(),
        hopeless_runs(runs),
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nat-matrix.md");
    std::fs::write(&path, doc).unwrap();
    println!("wrote {}", path.display());
}

#[test]
fn traversal_matrix() {
    if skip() {
        return;
    }
    // `STUNFWD_MATRIX_LOG=debug` prints the engines' logs (to see why a cell fails).
    if let Ok(level) = std::env::var("STUNFWD_MATRIX_LOG") {
        let level = level.parse().unwrap_or(tracing::Level::DEBUG);
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_test_writer()
            .try_init();
    }
    let runs = runs_per_cell();
    let specs = selected(all_cells());
    let parallel: usize = std::env::var("STUNFWD_MATRIX_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "matrix: {} cells, {runs} runs each, {parallel} labs at a time",
        specs.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let cells: Vec<Cell> = rt.block_on(async {
        let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let handles: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    let _permit = limit.acquire().await.expect("semaphore");
                    let t = Instant::now();
                    let n = if spec.hopeless() && !spec.relay {
                        hopeless_runs(runs)
                    } else {
                        runs
                    };
                    let cell = measure(spec, n).await;
                    let first = cell
                        .runs
                        .iter()
                        .filter(|r| r.ok && r.failure.is_none())
                        .count();
                    println!(
                        "  {:<62} {}/{n} in {:.1} s (first attempt {first}/{n})",
                        spec.name(),
                        cell.successes(),
                        t.elapsed().as_secs_f64()
                    );
                    cell
                })
            })
            .collect();
        let mut cells = Vec::new();
        for h in handles {
            cells.push(h.await.expect("cell task"));
        }
        cells
    });
    let took = started.elapsed();
    let mut tables = String::new();
    for relay in [false, true] {
        for stun in StunSetup::ALL {
            let group: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.spec.relay == relay && c.spec.stun == stun)
                .collect();
            if group.is_empty() {
                continue;
            }
            tables.push_str(&format!(
                "## {}\n\n{}\n",
                heading(stun, relay),
                table(&group)
            ));
        }
    }
    println!("\n{tables}");
    println!("matrix measured in {:.1} s", took.as_secs_f64());
    if std::env::var_os("STUNFWD_WRITE_MATRIX").is_some() {
        write_doc(&tables, runs, took);
    }
    let bad = check_targets(&cells, runs);
    assert!(
        bad.is_empty(),
        "{} target(s) missed:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

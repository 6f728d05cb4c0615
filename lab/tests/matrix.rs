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
//! (labs at a time, default 3), `STUNFWD_MATRIX_PUNCH_TTL` (`performance.punchTtl`
//! of every engine; 0 turns punching's openers off), `STUNFWD_WRITE_MATRIX=1` (write
//! docs/nat-matrix.md).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchbay::Device;
use stunfwd_core::{Engine, PathKind, State};
use stunfwd_lab::miniupnpd::Service;
use stunfwd_lab::*;

/// How long one run may take before it counts as failed.
const RUN_DEADLINE: Duration = Duration::from_secs(30);
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
            Side::Mapped(k, s) => format!("{}+{}", k.name(), s.name()),
        }
    }

    /// The NAT type an RFC 5780 test finds on this side; behind a router that maps our
    /// port, the type the engine offers (anyone reaches the mapped port).
    fn nat_type(self) -> &'static str {
        match self {
            Side::Nat(k) => k.expected_type(),
            Side::Mapped(..) => "full-cone",
            Side::Double | Side::SameNat { .. } => "port-restricted",
        }
    }

    fn symmetric(self) -> bool {
        self.nat_type() == "symmetric"
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

    fn same_nat(&self) -> bool {
        matches!(self.server, Side::SameNat { .. })
    }

    /// Issue #16's "hopeless": symmetric on both sides, or symmetric with a
    /// port-restricted NAT (a Linux masquerade router and double NAT are
    /// port-restricted). Sequential and preserving symmetric NATs count as symmetric.
    fn hopeless(&self) -> bool {
        let (a, b) = (self.server, self.client);
        let pr = |s: Side| s.nat_type() == "port-restricted";
        !self.same_nat()
            && ((a.symmetric() && b.symmetric())
                || (a.symmetric() && pr(b))
                || (pr(a) && b.symmetric()))
    }
}

/// One repetition.
#[derive(Debug, Clone)]
struct Run {
    /// The first byte came back and a 64 KiB echo after it was intact.
    ok: bool,
    ttfb: Option<Duration>,
    path: Option<PathKind>,
    /// NAT types the engines reported (server, client).
    detected: (String, String),
    /// The first failure the client reported (state reason or wait error), and when.
    failure: Option<(String, Duration)>,
    detail: String,
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

    fn paths(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for r in self.runs.iter().filter(|r| r.ok) {
            if let Some(p) = r.path {
                *m.entry(p.as_str()).or_insert(0) += 1;
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
async fn run_once(
    world: &World,
    spec: &CellSpec,
    (sdev, cdev): (&Device, &Device),
    echo: u16,
    rep: usize,
) -> anyhow::Result<Run> {
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
    let detected = (
        server.stats().nat_type.as_str().to_owned(),
        client.stats().nat_type.as_str().to_owned(),
    );
    stop_engine(client).await;
    stop_engine(server).await;
    Ok(Run {
        ok,
        ttfb,
        path,
        detected,
        failure,
        detail,
    })
}

async fn measure(spec: CellSpec, runs: usize) -> Cell {
    let mut cell = Cell {
        spec,
        runs: Vec::new(),
        setup_error: None,
    };
    let result = async {
        let world = World::new(WorldOptions::default()).await?;
        // The sites live as long as the cell: a site's miniupnpd stops with it.
        let (sdev, cdev, _sites) = if spec.same_nat() {
            let site = world.add_site(spec.server.spec("lan")).await?;
            (site.devices[0].clone(), site.devices[1].clone(), vec![site])
        } else {
            let s = world.add_site(spec.server.spec("ss")).await?;
            let c = world.add_site(spec.client.spec("cc")).await?;
            (s.devices[0].clone(), c.devices[0].clone(), vec![s, c])
        };
        let echo = tcp_echo(&sdev).await?;
        for rep in 0..runs {
            cell.runs
                .push(run_once(&world, &spec, (&sdev, &cdev), echo, rep).await?);
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
        "| server site | client site | success | median ms | worst ms | paths | detected (server/client) | detail |\n|---|---|---|---|---|---|---|---|\n",
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
        out.push_str(&format!(
            "| {server} | {client} | {}/{} | {} | {} | {} | {} | {} |\n",
            c.successes(),
            c.runs.len(),
            fmt(median.as_ref()),
            fmt(t.last()),
            if paths.is_empty() { "-".into() } else { paths },
            detected.join(", "),
            detail.replace('|', "/").replace('\n', " "),
        ));
    }
    out
}

/// The targets. Returns every violation (empty when all are met).
///
/// - Every cell that is not hopeless connects in at least R − ⌊R/20⌋ runs (19 of 20).
/// - With a relay configured every cell connects as often; hopeless cells go through
///   the relay. Other cells may use the relay or a direct path (the relay is checked
///   in parallel).
/// - Without a relay, cells that are not hopeless connect directly; hopeless cells
///   never connect and report their failure (a state reason) within [`FAIL_FAST`],
///   not after a hang.
/// - Two peers behind one NAT connect on the LAN path.
fn check_targets(cells: &[Cell], runs: usize) -> Vec<String> {
    let need = runs - runs / 20;
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
        let only = |bad: &mut Vec<String>, path: PathKind, why: &str| {
            if paths.iter().any(|p| *p != Some(path)) {
                bad.push(format!("{name}: {why} ({} path): {paths:?}", path.as_str()));
            }
        };
        if c.spec.same_nat() {
            connects(&mut bad);
            only(&mut bad, PathKind::Lan, "peers behind one NAT use the LAN");
        } else if c.spec.relay {
            connects(&mut bad);
            if c.spec.hopeless() {
                only(&mut bad, PathKind::Relay, "a hopeless cell uses the relay");
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
         the first destination only.\n\n\
         **A run.** Fresh engines and a fresh room in the cell's world: the server peer has a TCP echo service, the \
         client peer forwards a local port to it. Time to first byte is measured from starting the client engine until \
         one byte written to the forwarded port comes back echoed through the tunnel; a run succeeds when it does \
         within {} s and a 64 KiB echo after it is intact. Paths are what the client used at its first byte. Without a \
         relay, hopeless cells (symmetric with symmetric or port-restricted) stop at their first reported failure, and \
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
                    println!(
                        "  {:<62} {}/{n} in {:.1} s",
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

//! TCP throughput rows (issue #19): one stream against dumbpipe, socat and direct
//! loopback, and 8 parallel streams (`iperf3 -P 8`) against socat, each the median of
//! 3 runs taken in turns, plus each peer's peak RSS over the runs.

use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::{
    free_port, free_udp_port, iperf3, median, reset_hwm, start_dumbpipe, start_tunnel, step,
    wait_tcp, Better, Proc, Res, Signal, Table, Tools,
};

/// What the later rows need from the throughput runs.
pub(crate) struct Throughput {
    /// Median one-stream figures (they decide whether the RSS rows were measured).
    pub tunnel: Res<f64>,
    pub dumbpipe: Res<f64>,
    /// Peak RSS of each process over its runs: ("client" | "server", bytes).
    pub tunnel_rss: Vec<(String, Res<f64>)>,
    /// ("connect" | "listen", bytes).
    pub dumbpipe_rss: Vec<(String, Res<f64>)>,
}

/// The median of the runs that worked, or the first error when none did.
fn median_of(setup: Res<()>, runs: Vec<Res<f64>>) -> Res<f64> {
    setup?;
    let ok: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    match runs.into_iter().find_map(Result::err) {
        Some(e) if ok.is_empty() => Err(e),
        _ if ok.is_empty() => Err("no run".into()),
        _ => Ok(median(ok)),
    }
}

/// Adds the throughput rows; `dp_ticket` is dumbpipe's (binary, ticket, QUIC port).
pub(crate) fn tcp_rows(
    t: &Tools,
    sig: &Signal,
    table: &mut Table,
    dp_ticket: &Res<(std::path::PathBuf, String, u16)>,
) -> Throughput {
    step("tcp throughput");
    let secs = if t.quick { 3 } else { 5 };
    let iperf_port = free_port();
    let _iperf_server = t.iperf3.as_ref().ok().and_then(|bin| {
        Proc::spawn(
            "iperf3 -s",
            Command::new(bin).args(["-s", "-p", &iperf_port.to_string()]),
        )
        .ok()
    });
    let _ = wait_tcp(iperf_port, Duration::from_secs(5));
    let socat_port = free_port();
    let socat = t.socat.clone().and_then(|bin| {
        let s = Proc::spawn(
            "socat",
            Command::new(bin).args([
                format!("TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr"),
                format!("TCP:127.0.0.1:{iperf_port}"),
            ]),
        )?;
        wait_tcp(socat_port, Duration::from_secs(5))?;
        Ok(s)
    });
    let tunnel_local = free_port();
    let tunnel = start_tunnel(t, sig, &[format!("tcp:{tunnel_local}:{iperf_port}")], true)
        .and_then(|tun| {
            wait_tcp(tunnel_local, Duration::from_secs(5))?;
            Ok(tun)
        });
    let dp_local = free_port();
    let dp = dp_ticket.clone().and_then(|(bin, ticket, qport)| {
        let dp = start_dumbpipe(&bin, &ticket, qport, iperf_port, dp_local)?;
        // dumbpipe forwards only after its wait for the (unreachable) home relay.
        wait_tcp(dp_local, Duration::from_secs(30))?;
        Ok(dp)
    });
    // The readiness probes became connections to `iperf3 -s`, which serves one test at
    // a time: let it finish with them first.
    thread::sleep(Duration::from_millis(300));
    // Every pipe is set up first and measured in turns (median of 3 each, 1 with
    // --quick): on a shared 2-core machine the spread between runs is larger than the
    // margins being measured, and turns spread any drift evenly.
    let trials = if t.quick { 1 } else { 3 };
    let mut out = Throughput {
        tunnel: Err("no run".into()),
        dumbpipe: Err("no run".into()),
        tunnel_rss: Vec::new(),
        dumbpipe_rss: Vec::new(),
    };
    let (mut tun, mut dpr, mut soc, mut direct) = (vec![], vec![], vec![], vec![]);
    let (mut tun8, mut soc8, mut direct8) = (vec![], vec![], vec![]);
    let hwm = |p: &Proc| Ok(p.hwm_kb() as f64 * 1024.0);
    for _ in 0..trials {
        direct.push(iperf3(t, iperf_port, secs, 1));
        if socat.is_ok() {
            soc.push(iperf3(t, socat_port, secs, 1));
        }
        if let Ok(tu) = &tunnel {
            reset_hwm(tu.client.pid());
            reset_hwm(tu.server.pid());
            tun.push(iperf3(t, tunnel_local, secs, 1));
            out.tunnel_rss.push(("client".into(), hwm(&tu.client)));
            out.tunnel_rss.push(("server".into(), hwm(&tu.server)));
        }
        if let Ok(d) = &dp {
            reset_hwm(d.connect.pid());
            reset_hwm(d.listen.pid());
            dpr.push(iperf3(t, dp_local, secs, 1));
            out.dumbpipe_rss.push(("connect".into(), hwm(&d.connect)));
            out.dumbpipe_rss.push(("listen".into(), hwm(&d.listen)));
        }
    }
    step("tcp throughput, 8 streams");
    for _ in 0..trials {
        direct8.push(iperf3(t, iperf_port, secs, 8));
        if socat.is_ok() {
            soc8.push(iperf3(t, socat_port, secs, 8));
        }
        if tunnel.is_ok() {
            tun8.push(iperf3(t, tunnel_local, secs, 8));
        }
    }
    fn unit<T>(r: &Res<T>) -> Res<()> {
        r.as_ref().map(|_| ()).map_err(Clone::clone)
    }
    out.tunnel = median_of(unit(&tunnel), tun);
    out.dumbpipe = median_of(unit(&dp), dpr);
    let socat_tput = median_of(unit(&socat), soc);
    let direct_tput = median_of(Ok(()), direct);
    let tunnel8 = median_of(unit(&tunnel), tun8);
    let socat8 = median_of(unit(&socat), soc8);
    let direct8 = median_of(Ok(()), direct8);
    drop((tunnel, dp, socat));

    let gbit = "Gbit/s";
    table.row(
        "TCP throughput, 1 stream, tunnel vs dumbpipe",
        &out.tunnel,
        gbit,
        "dumbpipe",
        &out.dumbpipe,
        None,
    );
    table.ratio_target("≥ 2.5× dumbpipe", 2.5, Better::Higher);
    table.row(
        "TCP throughput, 1 stream, tunnel vs socat relay",
        &out.tunnel,
        gbit,
        "socat",
        &socat_tput,
        None,
    );
    table.ratio_target("≥ 1.0× socat", 1.0, Better::Higher);
    table.row(
        "TCP throughput, 1 stream, tunnel vs direct loopback",
        &out.tunnel,
        gbit,
        "direct",
        &direct_tput,
        None,
    );
    table.row(
        "TCP throughput, 8 streams (-P 8), tunnel vs socat",
        &tunnel8,
        gbit,
        "socat",
        &socat8,
        None,
    );
    table.ratio_target("≥ 1.0× socat", 1.0, Better::Higher);
    table.row(
        "TCP throughput, 8 streams, tunnel vs direct loopback",
        &tunnel8,
        gbit,
        "direct",
        &direct8,
        None,
    );
    out
}

/// dumbpipe's ticket for the runs that follow (binary, ticket, QUIC port).
pub(crate) fn dumbpipe_ticket(t: &Tools) -> Res<(std::path::PathBuf, String, u16)> {
    t.dumbpipe.clone().and_then(|bin| {
        let qport = free_udp_port();
        crate::dumbpipe_ticket(&bin, qport).map(|tk| (bin, tk, qport))
    })
}

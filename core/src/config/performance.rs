//! Tuning knobs: [`Performance`] (the `performance` object), its defaults and ranges.

use std::time::Duration;

use serde_json::{Map, Value};

use super::schema::{
    Fields, BIRTHDAY_PROBES, BIRTHDAY_RATE, BIRTHDAY_SOCKETS, IDLE_TIMEOUT, KEEP_ALIVE,
    MAX_RETRIES, MAX_UDP_FLOWS_PER_CLIENT, MAX_UDP_FLOWS_PER_MAPPING, PERFORMANCE_FIELDS,
    PUNCH_TTL, SIGNAL_BACKOFF, STUN_CACHE, TCP_BUFFER_SIZE, TUNNEL_WAIT, UDP_BUFFER_SIZE,
    UDP_FLOW_TIMEOUT, WORKERS,
};
use super::values::{
    check_duration, check_int, expect_object, fmt_duration, parse_duration, parse_uint, parse_usize,
};
use crate::error::{Error, Result};

const PERFORMANCE_EXPECTED: &str = "an object with keys stunCache, signalBackoff, tcpBufferSize, \
     udpBufferSize, maxRetries, udpFlowTimeout, keepAlive, idleTimeout, workers, tunnelWait, punchTtl, birthdaySockets, birthdayProbes, birthdayRate, \
     maxUdpFlowsPerMapping, maxUdpFlowsPerClient";

/// Tuning knobs (the `performance` object). Every field has a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Performance {
    /// `stunCache`: how long a STUN result is reused. Default 5 min, 1 s-24 h.
    pub stun_cache: Duration,
    /// `signalBackoff`: first delay of the signaling poll's exponential backoff.
    /// Default 500 ms, 10 ms-60 s.
    pub signal_backoff: Duration,
    /// `tcpBufferSize`: copy buffer per TCP direction, bytes. Default 65536, 1 KiB-16 MiB.
    pub tcp_buffer_size: usize,
    /// `udpBufferSize`: kernel `SO_RCVBUF`/`SO_SNDBUF` of UDP sockets, bytes.
    /// Default 1 MiB, 8 KiB-64 MiB. Datagram read buffers are always 64 KiB, so nothing
    /// is truncated whatever this is.
    pub udp_buffer_size: usize,
    /// `maxRetries`: fast reconnect attempts before falling back to one every 30 s.
    /// Default 3, 0-1000.
    pub max_retries: u32,
    /// `udpFlowTimeout`: a UDP flow idle this long is closed on both sides.
    /// Default 60 s, 1 s-24 h.
    pub udp_flow_timeout: Duration,
    /// `keepAlive`: QUIC keep-alive interval. Default 5 s (below common NAT UDP timeouts), 10 ms-1 h, and shorter than
    /// `idle_timeout`.
    pub keep_alive: Duration,
    /// `idleTimeout`: QUIC idle timeout: a tunnel silent this long is declared lost and
    /// reconnected. Default 15 s (three keep-alives), 100 ms-1 h.
    pub idle_timeout: Duration,
    /// `workers`: tokio worker threads of the engine's runtime, 1-64. Default: one per
    /// two CPUs, at most 2 (see [`default_workers`]).
    pub workers: usize,
    /// `tunnelWait`: how long a local TCP connection or UDP flow accepted while the
    /// tunnel is not up (starting, or reconnecting) waits for it. Its data is carried
    /// once the tunnel is up; when the time runs out the TCP connection is reset and
    /// counted in `tunnel_wait_timeouts`. Default 10 s, 100 ms-10 min.
    pub tunnel_wait: Duration,
    /// `punchTtl`: the IP TTL of the first check hole punching sends to each of the
    /// peer's candidates (an *opener*: it opens our NAT toward the candidate and
    /// expires before the peer's router; full checks follow 100 ms later). 0 sends no
    /// openers. Default 3 (past our NAT and a carrier-grade NAT behind it, short of
    /// the peer's router on any path with two routers between the NATs), 0-64.
    pub punch_ttl: u8,
    /// `birthdaySockets`: how many sockets birthday punching opens on the side behind
    /// a symmetric NAT (`agent::birthday`). Default 256 (with 2,000 probes a 99.96 %
    /// chance over 64,512 ports), 0-1024; 0 turns birthday punching (and port
    /// prediction, `agent::predict`) off.
    pub birthday_sockets: usize,
    /// `birthdayProbes`: how many probes the easy side of birthday punching sends at
    /// most. Default 2000, 1-20000.
    pub birthday_probes: usize,
    /// `birthdayRate`: packets per second either side of birthday punching sends at
    /// most. Default 1000, 10-10000.
    pub birthday_rate: u32,
    /// `maxUdpFlowsPerMapping`: client role: UDP flows (local source addresses) one
    /// mapping carries at once. A datagram from a new source beyond it is dropped,
    /// counted in `flows_refused` and logged. Default 1024, 1-65536.
    pub max_udp_flows_per_mapping: usize,
    /// `maxUdpFlowsPerClient`: server role: UDP flows one client may have open at once
    /// (each holds a socket, so a descriptor, until `udpFlowTimeout`). A flow beyond it
    /// is refused, and counted in `flows_refused` on both sides. Default 4096, 1-65536.
    pub max_udp_flows_per_client: usize,
}

/// The default `workers`: one runtime thread per two CPUs, between 1 and 2. One QUIC
/// connection is driven by one task, so more threads add little; and on a small
/// machine, where the engine shares the CPUs with the service it forwards, a second
/// worker costs more in cross-thread wake-ups than it gains. Measured on 2 cores with
/// iperf3 through a loopback tunnel: 4.6-5.6 Gbit/s with 1 worker, 3.4-4.1 with 2
/// (docs/benchmarks.md).
pub fn default_workers() -> usize {
    // Asked once: on Linux the answer reads the cgroup files, and every parsed config
    // starts from `Performance::default()`.
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus / 2).clamp(1, 2)
    })
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            stun_cache: Duration::from_secs(5 * 60),
            signal_backoff: Duration::from_millis(500),
            tcp_buffer_size: 64 * 1024,
            udp_buffer_size: 1024 * 1024,
            max_retries: 3,
            udp_flow_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            workers: default_workers(),
            tunnel_wait: Duration::from_secs(10),
            punch_ttl: 3,
            birthday_sockets: 256,
            birthday_probes: 2000,
            birthday_rate: 1000,
            max_udp_flows_per_mapping: 1024,
            max_udp_flows_per_client: 4096,
        }
    }
}

const MIB: u64 = 1024 * 1024;

impl Performance {
    /// True when birthday punching may run (`birthdaySockets` is not 0).
    pub fn birthday(&self) -> bool {
        self.birthday_sockets > 0
    }

    /// The TTL of punching's openers, `None` when `punchTtl` is 0 (no openers).
    pub fn opener_ttl(&self) -> Option<u8> {
        (self.punch_ttl > 0).then_some(self.punch_ttl)
    }

    pub(super) fn check(&self, prefix: &str) -> Result<()> {
        let key = |name: &str| format!("{prefix}.{name}");
        check_duration(
            &key(STUN_CACHE.name),
            self.stun_cache,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        check_duration(
            &key(SIGNAL_BACKOFF.name),
            self.signal_backoff,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        check_int(
            &key(TCP_BUFFER_SIZE.name),
            self.tcp_buffer_size as u64,
            1024,
            16 * MIB,
            "bytes",
        )?;
        check_int(
            &key(UDP_BUFFER_SIZE.name),
            self.udp_buffer_size as u64,
            8192,
            64 * MIB,
            "bytes",
        )?;
        check_int(
            &key(MAX_RETRIES.name),
            u64::from(self.max_retries),
            0,
            1000,
            "attempts",
        )?;
        check_duration(
            &key(UDP_FLOW_TIMEOUT.name),
            self.udp_flow_timeout,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )?;
        check_duration(
            &key(KEEP_ALIVE.name),
            self.keep_alive,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        check_duration(
            &key(IDLE_TIMEOUT.name),
            self.idle_timeout,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if self.keep_alive >= self.idle_timeout {
            return Err(Error::config(
                key(KEEP_ALIVE.name),
                fmt_duration(self.keep_alive),
                format!(
                    "the keep-alive must be shorter than idleTimeout ({}), or the connection \
                     times out between keep-alives",
                    fmt_duration(self.idle_timeout)
                ),
                "a keepAlive shorter than idleTimeout, typically half of it",
            ));
        }
        check_int(&key(WORKERS.name), self.workers as u64, 1, 64, "threads")?;
        check_duration(
            &key(TUNNEL_WAIT.name),
            self.tunnel_wait,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        check_int(
            &key(PUNCH_TTL.name),
            u64::from(self.punch_ttl),
            0,
            64,
            "hops",
        )?;
        check_int(
            &key(BIRTHDAY_SOCKETS.name),
            self.birthday_sockets as u64,
            0,
            1024,
            "sockets",
        )?;
        check_int(
            &key(BIRTHDAY_PROBES.name),
            self.birthday_probes as u64,
            1,
            20_000,
            "probes",
        )?;
        check_int(
            &key(BIRTHDAY_RATE.name),
            u64::from(self.birthday_rate),
            10,
            10_000,
            "packets per second",
        )?;
        check_int(
            &key(MAX_UDP_FLOWS_PER_MAPPING.name),
            self.max_udp_flows_per_mapping as u64,
            1,
            65_536,
            "flows",
        )?;
        check_int(
            &key(MAX_UDP_FLOWS_PER_CLIENT.name),
            self.max_udp_flows_per_client as u64,
            1,
            65_536,
            "flows",
        )?;
        Ok(())
    }

    pub(super) fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(STUN_CACHE.name.into(), fmt_duration(self.stun_cache).into());
        m.insert(
            SIGNAL_BACKOFF.name.into(),
            fmt_duration(self.signal_backoff).into(),
        );
        m.insert(TCP_BUFFER_SIZE.name.into(), self.tcp_buffer_size.into());
        m.insert(UDP_BUFFER_SIZE.name.into(), self.udp_buffer_size.into());
        m.insert(MAX_RETRIES.name.into(), self.max_retries.into());
        m.insert(
            UDP_FLOW_TIMEOUT.name.into(),
            fmt_duration(self.udp_flow_timeout).into(),
        );
        m.insert(KEEP_ALIVE.name.into(), fmt_duration(self.keep_alive).into());
        m.insert(
            IDLE_TIMEOUT.name.into(),
            fmt_duration(self.idle_timeout).into(),
        );
        m.insert(WORKERS.name.into(), self.workers.into());
        m.insert(
            TUNNEL_WAIT.name.into(),
            fmt_duration(self.tunnel_wait).into(),
        );
        m.insert(PUNCH_TTL.name.into(), self.punch_ttl.into());
        m.insert(BIRTHDAY_SOCKETS.name.into(), self.birthday_sockets.into());
        m.insert(BIRTHDAY_PROBES.name.into(), self.birthday_probes.into());
        m.insert(BIRTHDAY_RATE.name.into(), self.birthday_rate.into());
        m.insert(
            MAX_UDP_FLOWS_PER_MAPPING.name.into(),
            self.max_udp_flows_per_mapping.into(),
        );
        m.insert(
            MAX_UDP_FLOWS_PER_CLIENT.name.into(),
            self.max_udp_flows_per_client.into(),
        );
        Value::Object(m)
    }
}

pub(super) fn parse_performance(key: &str, v: &Value) -> Result<Performance> {
    let obj = expect_object(key, v, PERFORMANCE_EXPECTED)?;
    let fields = Fields::new(obj, key);
    fields.check_unknown(PERFORMANCE_FIELDS)?;
    let mut p = Performance::default();
    if let Some((k, v)) = fields.get(&STUN_CACHE)? {
        p.stun_cache = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&SIGNAL_BACKOFF)? {
        p.signal_backoff = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&TCP_BUFFER_SIZE)? {
        p.tcp_buffer_size = parse_usize(&k, v, "a size in bytes, 1024-16777216")?;
    }
    if let Some((k, v)) = fields.get(&UDP_BUFFER_SIZE)? {
        p.udp_buffer_size = parse_usize(&k, v, "a size in bytes, 8192-67108864")?;
    }
    if let Some((k, v)) = fields.get(&MAX_RETRIES)? {
        let n = parse_uint(&k, v, "a number of attempts, 0-1000")?;
        p.max_retries = u32::try_from(n).unwrap_or(u32::MAX);
        check_int(&k, n, 0, 1000, "attempts")?;
    }
    if let Some((k, v)) = fields.get(&UDP_FLOW_TIMEOUT)? {
        p.udp_flow_timeout = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&KEEP_ALIVE)? {
        p.keep_alive = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&IDLE_TIMEOUT)? {
        p.idle_timeout = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&WORKERS)? {
        p.workers = parse_usize(&k, v, "a number of threads, 1-64")?;
    }
    if let Some((k, v)) = fields.get(&TUNNEL_WAIT)? {
        p.tunnel_wait = parse_duration(&k, v)?;
    }
    if let Some((k, v)) = fields.get(&PUNCH_TTL)? {
        let n = parse_uint(&k, v, "a number of hops, 0-64 (0: no openers)")?;
        check_int(&k, n, 0, 64, "hops")?;
        p.punch_ttl = u8::try_from(n).unwrap_or(u8::MAX);
    }
    if let Some((k, v)) = fields.get(&BIRTHDAY_SOCKETS)? {
        let n = parse_uint(
            &k,
            v,
            "a number of sockets, 0-1024 (0: no birthday punching or port prediction)",
        )?;
        check_int(&k, n, 0, 1024, "sockets")?;
        p.birthday_sockets = n as usize;
    }
    if let Some((k, v)) = fields.get(&BIRTHDAY_PROBES)? {
        let n = parse_uint(&k, v, "a number of probes, 1-20000")?;
        check_int(&k, n, 1, 20_000, "probes")?;
        p.birthday_probes = n as usize;
    }
    if let Some((k, v)) = fields.get(&BIRTHDAY_RATE)? {
        let n = parse_uint(&k, v, "packets per second, 10-10000")?;
        check_int(&k, n, 10, 10_000, "packets per second")?;
        p.birthday_rate = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some((k, v)) = fields.get(&MAX_UDP_FLOWS_PER_MAPPING)? {
        let n = parse_uint(&k, v, "a number of flows, 1-65536")?;
        check_int(&k, n, 1, 65_536, "flows")?;
        p.max_udp_flows_per_mapping = n as usize;
    }
    if let Some((k, v)) = fields.get(&MAX_UDP_FLOWS_PER_CLIENT)? {
        let n = parse_uint(&k, v, "a number of flows, 1-65536")?;
        check_int(&k, n, 1, 65_536, "flows")?;
        p.max_udp_flows_per_client = n as usize;
    }
    p.check(key)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::config::test_support::{parse, with};

    #[test]
    fn go_review_performance_block() {
        let c = parse(with(json!({"performance": {
            "stunCache": "5m", "signalBackoff": "500ms", "tcpBufferSize": 65536,
            "udpBufferSize": 8192, "maxRetries": 3
        }})));
        let p = &c.performance;
        assert_eq!(p.stun_cache, Duration::from_secs(300));
        assert_eq!(p.signal_backoff, Duration::from_millis(500));
        assert_eq!(p.tcp_buffer_size, 65536);
        assert_eq!(p.udp_buffer_size, 8192);
        assert_eq!(p.max_retries, 3);
        assert_eq!(p.idle_timeout, Duration::from_secs(15));
    }

    #[test]
    fn udp_flow_caps() {
        let c = parse(with(json!({"performance": {
            "maxUdpFlowsPerMapping": 10, "maxUdpFlowsPerClient": 20000
        }})));
        assert_eq!(c.performance.max_udp_flows_per_mapping, 10);
        assert_eq!(c.performance.max_udp_flows_per_client, 20000);
        let d = crate::config::Performance::default();
        assert_eq!(
            (d.max_udp_flows_per_mapping, d.max_udp_flows_per_client),
            (1024, 4096)
        );
        for bad in [json!(0), json!(65537), json!("many")] {
            let err = crate::config::Config::from_value(with(
                json!({"performance": {"maxUdpFlowsPerClient": bad}}),
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains("performance.maxUdpFlowsPerClient"), "{err}");
            assert!(err.contains("65536"), "{err}");
        }
    }
}

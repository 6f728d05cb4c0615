//! The NAT lab: real Linux NATs in network namespaces (built with `patchbay`: netns,
//! veth, nftables, tc), an "internet" with our rendezvous server and coturn, and
//! stunfwd engines on devices behind the NATs.
//!
//! Every address used lives inside namespaces the lab creates; dropping a [`World`]
//! tears all of it down (namespaces, nftables rules, the coturn process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay::{
    Device, Lab, LinkCondition, LinkDirection, Nat, NatConfig, NatFiltering, NatMapping, Router,
    RouterPreset,
};
use stunfwd_core::{Config, Engine, SignalServer, SignalServerConfig};

/// The long-term TURN credentials coturn is started with.
pub const TURN_USER: &str = "lab";
/// Password of [`TURN_USER`].
pub const TURN_PASSWORD: &str = "lab-secret";
/// The TURN realm.
pub const TURN_REALM: &str = "stunfwd.lab";

/// The NAT behaviours of the lab (RFC 4787 terms in the comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (masquerade).
    PortRestricted,
    /// Endpoint-dependent mapping (masquerade with random ports).
    Symmetric,
}

impl NatKind {
    /// All four, in table order.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// The name stunfwd reports for this NAT type.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::FullCone => "full-cone",
            NatKind::AddressRestricted => "address-restricted",
            NatKind::PortRestricted => "port-restricted",
            NatKind::Symmetric => "symmetric",
        }
    }

    /// The patchbay NAT configuration; `udp_timeout` lowers the conntrack UDP timeouts.
    pub fn config(self, udp_timeout: Option<u32>) -> NatConfig {
        let (mapping, filtering) = match self {
            NatKind::FullCone => (
                NatMapping::EndpointIndependent,
                NatFiltering::EndpointIndependent,
            ),
            NatKind::AddressRestricted => (
                NatMapping::EndpointIndependent,
                NatFiltering::AddressDependent,
            ),
            NatKind::PortRestricted => (
                NatMapping::EndpointIndependent,
                NatFiltering::AddressAndPortDependent,
            ),
            NatKind::Symmetric => (
                NatMapping::EndpointDependent,
                NatFiltering::AddressAndPortDependent,
            ),
        };
        let mut b = NatConfig::builder()
            .mapping(mapping)
            .filtering(filtering)
            .hairpin(false);
        if let Some(t) = udp_timeout {
            b = b.udp_timeout(t).udp_stream_timeout(t);
        }
        b.build().expect("valid NAT config")
    }
}

/// Why the lab cannot run here, if it cannot (then tests print it and skip).
pub fn unavailable() -> Option<String> {
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if euid != "0" {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    for tool in ["nft", "tc", "ip", "turnserver", "conntrack"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian packages: nftables iproute2 coturn conntrack)"
            ));
        }
    }
    if std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Some("`ip netns` does not work on this machine".into());
    }
    None
}

/// Runs a lab test body on a fresh two-worker runtime, or prints why the lab is
/// skipped here.
pub fn run(body: impl std::future::Future<Output = Result<()>>) {
    if skip() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(body) {
        panic!("{e:#}");
    }
}

/// Prints why the lab is skipped and returns true when it is.
pub fn skip() -> bool {
    match unavailable() {
        Some(why) => {
            println!("SKIPPED: NAT lab not run: {why}");
            true
        }
        None => false,
    }
}

static WORLD: AtomicU32 = AtomicU32::new(0);

/// An isolated internet: a public router with the rendezvous server (HTTP + our STUN
/// responder) and coturn on a device with two addresses (RFC 5780 needs two).
pub struct World {
    /// The patchbay lab (owns every namespace).
    pub lab: Lab,
    /// The "internet" router (public addresses, no NAT).
    pub inet: Router,
    /// The device running the rendezvous server and coturn.
    pub server: Device,
    /// Rendezvous URL.
    pub signal_url: String,
    /// coturn's two STUN/TURN addresses (primary, alternate), port 3478.
    pub coturn: [SocketAddr; 2],
    signal: Option<SignalServer>,
    turn: Option<tokio::process::Child>,
    dir: std::path::PathBuf,
    id: u32,
}

/// Options for [`World::new`].
#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// Extra coturn arguments (e.g. short lifetimes, quotas).
    pub coturn_args: Vec<String>,
}

impl World {
    /// Builds the internet part. Must run inside a tokio runtime.
    pub async fn new(opts: WorldOptions) -> Result<World> {
        let id = WORLD.fetch_add(1, Ordering::Relaxed);
        let lab = Lab::builder().allow_real_root().build().await?;
        let inet = lab
            .add_router("inet")
            .preset(RouterPreset::PublicV4)
            .build()
            .await?;
        let server = lab
            .add_device("rendezvous")
            .iface("eth0", inet.id())
            .iface("eth1", inet.id())
            .build()
            .await?;
        let ip0 = server
            .iface("eth0")
            .and_then(|i| i.ip())
            .context("eth0 ip")?;
        let ip1 = server
            .iface("eth1")
            .and_then(|i| i.ip())
            .context("eth1 ip")?;
        let http: SocketAddr = (ip0, 8080).into();
        let stun: SocketAddr = (ip0, 3480).into();
        let signal = server
            .spawn(move |_| async move {
                SignalServer::start(SignalServerConfig {
                    http,
                    stun: Some(stun),
                    ..SignalServerConfig::default()
                })
                .await
            })?
            .await??;
        let signal_url = signal.url();
        let dir = std::env::temp_dir().join(format!("stunfwd-lab-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = tokio::process::Command::new("turnserver");
        cmd.args([
            "-n",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--fingerprint",
            "--lt-cred-mech",
            "--realm",
            TURN_REALM,
            "--user",
            &format!("{TURN_USER}:{TURN_PASSWORD}"),
            "--listening-ip",
            &ip0.to_string(),
            "--listening-ip",
            &ip1.to_string(),
            "--relay-ip",
            &ip0.to_string(),
            "--listening-port",
            "3478",
            "--alt-listening-port",
            "3479",
            "--min-port",
            "49152",
            "--max-port",
            "49999",
            "--allow-loopback-peers",
            "--no-multicast-peers",
            "--simple-log",
            "--log-file",
            &dir.join("turnserver.log").to_string_lossy(),
            "--pidfile",
            &dir.join("turnserver.pid").to_string_lossy(),
            "--db",
            &dir.join("turndb.sqlite").to_string_lossy(),
        ]);
        cmd.args(&opts.coturn_args);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let turn = server.spawn_command(cmd)?;
        let coturn = [SocketAddr::from((ip0, 3478)), SocketAddr::from((ip1, 3478))];
        let world = World {
            lab,
            inet,
            server,
            signal_url,
            coturn,
            signal: Some(signal),
            turn: Some(turn),
            dir,
            id,
        };
        world.wait_for_coturn().await?;
        Ok(world)
    }

    async fn wait_for_coturn(&self) -> Result<()> {
        let target = self.coturn[0];
        for _ in 0..100 {
            let up = self
                .server
                .run_sync(move || {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    let tid = stunfwd_core::stun::message::new_tid();
                    s.send_to(&stunfwd_core::stun::message::binding_request(tid), target)?;
                    let mut buf = [0u8; 512];
                    Ok(s.recv_from(&mut buf).is_ok())
                })
                .unwrap_or(false);
            if up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("coturn did not answer STUN on {target} within 5 s")
    }

    /// A NAT router of `kind` with `devices` devices behind it.
    pub async fn site(
        &self,
        name: &str,
        kind: NatKind,
        devices: usize,
        udp_timeout: Option<u32>,
    ) -> Result<(Router, Vec<Device>)> {
        let router = self
            .lab
            .add_router(name)
            .nat(Nat::Custom(kind.config(udp_timeout)))
            .build()
            .await?;
        let mut devs = Vec::new();
        for i in 0..devices {
            devs.push(
                self.lab
                    .add_device(&format!("{name}-d{i}"))
                    .iface("eth0", router.id())
                    .build()
                    .await?,
            );
        }
        Ok((router, devs))
    }

    /// A peer config for this world (default bind: every interface, like a user's).
    pub fn config(&self, mode: &str, room: &str, extra: serde_json::Value) -> Config {
        let mut v = serde_json::json!({
            "mode": mode,
            "room": room,
            "secret": format!("lab secret {room}"),
            "signalUrl": self.signal_url,
            "stunServers": [self.coturn[0].to_string(), self.coturn[1].to_string()],
        });
        if let (Some(o), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in extra {
                o.insert(k.clone(), val.clone());
            }
        }
        Config::from_value(v).expect("lab config")
    }

    /// Stops the rendezvous server (it stays down until [`World::start_signal`]).
    pub async fn stop_signal(&mut self) -> Result<(SocketAddr, Option<SocketAddr>)> {
        let s = self.signal.take().context("no rendezvous running")?;
        let addrs = (s.http_addr(), s.stun_addr());
        s.stop(Duration::from_secs(1)).await;
        Ok(addrs)
    }

    /// Starts the rendezvous server again on the given addresses.
    pub async fn start_signal(&mut self, http: SocketAddr, stun: Option<SocketAddr>) -> Result<()> {
        let signal = self
            .server
            .spawn(move |_| async move {
                SignalServer::start(SignalServerConfig {
                    http,
                    stun,
                    ..SignalServerConfig::default()
                })
                .await
            })?
            .await??;
        self.signal = Some(signal);
        Ok(())
    }

    /// Drops `percent` % of the UDP packets `router` forwards, both directions, with an
    /// nftables `numgen random` rule (works where `tc netem` is missing from the kernel).
    pub async fn udp_loss(&self, router: &Router, percent: f32) -> Result<()> {
        let per_mille = (percent * 10.0).round() as u32;
        let rules = format!(
            "table inet stunfwd_loss {{\n chain lossy {{\n  type filter hook forward priority -10; policy accept;\n  meta l4proto udp numgen random mod 1000 < {per_mille} drop\n }}\n}}\n"
        );
        let mut cmd = tokio::process::Command::new("nft");
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = router.spawn_command(cmd)?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin.write_all(rules.as_bytes()).await?;
        }
        let status = child.wait().await?;
        if !status.success() {
            bail!("nft loss rule failed");
        }
        Ok(())
    }

    /// Drops UDP between `router`'s network and `other` (a peer site's public IP) in
    /// `router`'s namespace, leaving everything else (the rendezvous, coturn) alone.
    pub async fn block_udp(&self, router: &Router, other: IpAddr) -> Result<()> {
        let rules = format!(
            "table inet stunfwd_block {{\n chain blocked {{\n  type filter hook forward priority -20; policy accept;\n  ip daddr {other} meta l4proto udp drop\n  ip saddr {other} meta l4proto udp drop\n }}\n}}\n"
        );
        nft(router, &rules).await
    }

    /// Removes the rule of [`World::block_udp`].
    pub async fn unblock_udp(&self, router: &Router) -> Result<()> {
        nft(router, "delete table inet stunfwd_block\n").await
    }

    /// True when this kernel has `sch_netem` (delay and loss with tc).
    pub fn netem_available() -> bool {
        std::path::Path::new("/sys/module/sch_netem").exists()
    }

    /// Impairs `dev`'s link (both directions).
    pub async fn impair(&self, dev: &Device, condition: LinkCondition) -> Result<()> {
        dev.iface("eth0")
            .context("eth0")?
            .set_condition(condition, LinkDirection::Both)
            .await
    }

    /// This world's number (unique in the process).
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut t) = self.turn.take() {
            let _ = t.start_kill();
            // Reap it (kill_on_drop alone leaves reaping to the runtime).
            for _ in 0..50 {
                if matches!(t.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        drop(self.signal.take());
        self.lab.cleanup();
    }
}

/// Runs an nftables script in `router`'s namespace.
async fn nft(router: &Router, rules: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = router.spawn_command(cmd)?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(rules.as_bytes()).await?;
    }
    let status = child.wait().await?;
    if !status.success() {
        bail!("nft rules failed: {rules}");
    }
    Ok(())
}

/// Starts an engine inside `dev`'s network namespace (its runtime threads, sockets and
/// everything they later create stay there).
pub fn start_engine(dev: &Device, config: Config) -> Result<Engine> {
    dev.run_sync(move || Ok(Engine::start(config)?))
}

/// Runs a blocking closure on a thread inside `dev`'s namespace and waits for it.
pub async fn in_ns<R: Send + 'static>(
    dev: &Device,
    f: impl FnOnce() -> Result<R> + Send + 'static,
) -> Result<R> {
    let handle = dev.spawn_thread(f)?;
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

/// Starts a TCP echo service on 127.0.0.1 inside `dev`; returns its port.
pub async fn tcp_echo(dev: &Device) -> Result<u16> {
    in_ns(dev, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Ok(port)
    })
    .await
}

/// Starts a UDP echo service on 127.0.0.1 inside `dev`; returns its port.
pub async fn udp_echo(dev: &Device) -> Result<u16> {
    in_ns(dev, || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        Ok(port)
    })
    .await
}

/// Sends `data` through a local TCP port inside `dev` and checks the echo.
pub async fn echo_through(dev: &Device, port: u16, data: Vec<u8>, timeout: Duration) -> Result<()> {
    in_ns(dev, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(timeout))?;
        let mut w = s.try_clone()?;
        let d2 = data.clone();
        let writer = std::thread::spawn(move || w.write_all(&d2));
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        if got != data {
            bail!("echo differs");
        }
        Ok(())
    })
    .await
}

/// Counts the conntrack entries (all protocols) in `router`'s namespace.
pub async fn conntrack_count(router: &Router) -> Result<usize> {
    let mut cmd = tokio::process::Command::new("conntrack");
    cmd.args(["-L", "-n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = router.spawn_command(cmd)?.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Lists conntrack entries of `router` (for diagnostics).
pub async fn conntrack_list(router: &Router) -> Result<String> {
    let mut cmd = tokio::process::Command::new("conntrack");
    cmd.args(["-L", "-n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = router.spawn_command(cmd)?.wait_with_output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sets a sysctl inside `router`'s namespace.
pub async fn sysctl(router: &Router, key: &str, value: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new("sysctl");
    cmd.args(["-q", "-w", &format!("{key}={value}")])
        .stdout(Stdio::null());
    let status = router.spawn_command(cmd)?.wait().await?;
    if !status.success() {
        bail!("sysctl {key}={value} failed");
    }
    Ok(())
}

/// The path of the `stunfwd` binary of this build (for CLI tests).
pub fn stunfwd_bin() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/stunfwd")
}

/// An IP of `dev`'s first interface.
pub fn ip_of(dev: &Device) -> IpAddr {
    IpAddr::V4(dev.ip().expect("device has an IPv4 address"))
}

//! The lab's internet: an IX with routed hops between sites, the rendezvous server,
//! coturn started from the README's command, and NAT sites built from a [`SiteSpec`].
//!
//! ```text
//!   device ── NAT router ──┐                               ┌── NAT router ── device
//!                      ISP router ── IX (routes) ── ISP router
//!   device ── home NAT ── CGNAT (100.64/10) ──┘      │
//!                                              "inet" router ── rendezvous + coturn
//! ```
//!
//! The IX, the "inet" router and the servers are dual-stack (2001:db8::/32, inside
//! the namespaces only). A site built with [`SiteSpec::ipv6`] is dual-stack too: its
//! devices keep IPv4 behind the NAT and also get a global IPv6 address, behind a
//! stateful firewall on the same router that lets in only return traffic (no NAT66,
//! like a home router by RFC 6092). Other sites are IPv4 only.
//!
//! Between two sites' outermost NAT routers a packet crosses three routers that
//! decrement its TTL: the sender's ISP router, the IX's routing namespace and the
//! receiver's ISP router.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay::{
    Device, Ipv4Net, Ipv6Profile, Lab, LinkCondition, LinkDirection, Nat, Router, RouterPreset,
};
use stunfwd_core::{Config, SignalServer, SignalServerConfig};

use crate::miniupnpd::{self, Miniupnpd, Service};
use crate::nat::NatKind;
use crate::net::{nft, sysctl};
use crate::{coturn, TURN_PASSWORD, TURN_USER};

static WORLD: AtomicU32 = AtomicU32::new(0);

/// Which STUN servers the peers are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StunSetup {
    /// coturn's two addresses: RFC 5780 mapping and filtering tests can run.
    #[default]
    Rfc5780,
    /// One plain STUN server without RFC 5780 (no OTHER-ADDRESS): the rendezvous
    /// server's own responder, like a public STUN server or the Go tool's
    /// `stunServer`.
    Plain,
}

impl StunSetup {
    /// Both set-ups.
    pub const ALL: [StunSetup; 2] = [StunSetup::Rfc5780, StunSetup::Plain];

    /// `rfc5780` or `plain`.
    pub fn name(self) -> &'static str {
        match self {
            StunSetup::Rfc5780 => "rfc5780",
            StunSetup::Plain => "plain",
        }
    }
}

/// Options for [`World::new`].
#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// Extra coturn arguments, appended after the README's command and the lab's
    /// files (e.g. short lifetimes, quotas).
    pub coturn_args: Vec<String>,
    /// The STUN servers [`World::config`] gives the peers.
    pub stun: StunSetup,
    /// coturn also listens on the server's IPv6 address ([`World::coturn_v6`]). Off by
    /// default: the README's command has two IPv4 addresses, and the RFC 5780 tests
    /// run against exactly that.
    pub coturn_v6: bool,
}

/// One site: devices behind a NAT router (itself behind a CGNAT for double NAT),
/// behind the site's own ISP router on the IX.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Router name (unique in the world); the ISP, CGNAT and devices get suffixes.
    pub name: String,
    /// The NAT next to the devices.
    pub kind: NatKind,
    /// Devices behind it.
    pub devices: usize,
    /// Conntrack UDP timeouts (seconds) of the site's NAT routers, when lowered.
    pub udp_timeout: Option<u32>,
    /// Hairpinning on the NAT next to the devices (endpoint-independent kinds only).
    pub hairpin: bool,
    /// A carrier-grade NAT between the site's NAT and its ISP (double NAT), with
    /// its downstream in 100.64.0.0/10.
    pub cgnat: Option<NatKind>,
    /// Dual-stack: the devices also get a global IPv6 address (2001:db8:1::/48),
    /// behind a stateful firewall ([`ipv6_firewall_rules`]) on the NAT router.
    pub ipv6: bool,
    /// A miniupnpd on the NAT next to the devices, serving this protocol; the site's
    /// public addresses are then outside the reserved ranges miniupnpd refuses.
    pub port_mapper: Option<Service>,
}

impl SiteSpec {
    /// A site named `name` with one device behind a NAT of `kind`.
    pub fn new(name: &str, kind: NatKind) -> SiteSpec {
        SiteSpec {
            name: name.to_owned(),
            kind,
            devices: 1,
            udp_timeout: None,
            hairpin: false,
            cgnat: None,
            ipv6: false,
            port_mapper: None,
        }
    }

    /// Dual-stack: global IPv6 behind a stateful firewall next to the IPv4 NAT.
    pub fn ipv6(mut self, on: bool) -> SiteSpec {
        self.ipv6 = on;
        self
    }

    /// A miniupnpd serving `service` on the NAT next to the devices.
    pub fn port_mapper(mut self, service: Service) -> SiteSpec {
        self.port_mapper = Some(service);
        self
    }

    /// `n` devices behind the NAT.
    pub fn devices(mut self, n: usize) -> SiteSpec {
        self.devices = n;
        self
    }

    /// Conntrack UDP timeouts of `secs` seconds (e.g. 30, a short mapping timeout).
    pub fn udp_timeout(mut self, secs: u32) -> SiteSpec {
        self.udp_timeout = Some(secs);
        self
    }

    /// Hairpinning on or off (patchbay hairpins endpoint-independent NATs only).
    pub fn hairpin(mut self, on: bool) -> SiteSpec {
        self.hairpin = on;
        self
    }

    /// Puts the NAT behind a carrier-grade NAT of `kind` (double NAT).
    pub fn behind_cgnat(mut self, kind: NatKind) -> SiteSpec {
        self.cgnat = Some(kind);
        self
    }

    /// The NAT type an RFC 5780 test must detect from a device of this site.
    pub fn expected_type(&self) -> &'static str {
        match self.cgnat {
            // Two NATs in a row: endpoint-dependent if either is; otherwise the
            // stricter filtering of the two.
            Some(cg) => {
                let order = |k: NatKind| match k.expected_type() {
                    "full-cone" => 0,
                    "address-restricted" => 1,
                    "port-restricted" => 2,
                    _ => 3,
                };
                if order(cg) >= order(self.kind) {
                    cg.expected_type()
                } else {
                    self.kind.expected_type()
                }
            }
            None => self.kind.expected_type(),
        }
    }

    /// A short description: the kind, or `double(home/cgnat)`; `+upnp`, `+natpmp` or
    /// `+pcp` with a port mapper, `+v6` for a dual-stack site.
    pub fn label(&self) -> String {
        let mut nat = match self.cgnat {
            Some(cg) => format!("double({}/{})", self.kind.name(), cg.name()),
            None => self.kind.name().to_owned(),
        };
        if let Some(s) = self.port_mapper {
            nat = format!("{nat}+{}", s.name());
        }
        if self.ipv6 {
            format!("{nat}+v6")
        } else {
            nat
        }
    }
}

/// A built site.
pub struct Site {
    /// What it was built from.
    pub spec: SiteSpec,
    /// The site's ISP router (public, no NAT) on the IX.
    pub isp: Router,
    /// The carrier-grade NAT, for double NAT.
    pub cgnat: Option<Router>,
    /// The NAT router next to the devices.
    pub router: Router,
    /// The devices behind it.
    pub devices: Vec<Device>,
    /// The miniupnpd on `router`, when the spec asks for one.
    pub miniupnpd: Option<Miniupnpd>,
}

impl Site {
    /// The outermost NAT router (the CGNAT for double NAT).
    pub fn outer(&self) -> &Router {
        self.cgnat.as_ref().unwrap_or(&self.router)
    }

    /// The site's public IP (the outermost NAT's uplink address).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.outer().uplink_ip().expect("NAT router has an uplink")
    }

    /// Device `i`'s global IPv6 address (dual-stack sites only).
    pub fn device_v6(&self, i: usize) -> Option<Ipv6Addr> {
        self.devices.get(i).and_then(|d| d.ip6())
    }

    /// Every NAT router of the site, nearest to the devices first.
    pub fn nat_routers(&self) -> Vec<&Router> {
        std::iter::once(&self.router)
            .chain(self.cgnat.as_ref())
            .collect()
    }
}

/// An isolated internet: routed ISPs on an IX, a public "inet" router with the
/// rendezvous server (HTTP + our plain STUN responder) and coturn on a device with
/// two addresses (RFC 5780 needs two).
pub struct World {
    /// The patchbay lab (owns every namespace).
    pub lab: Lab,
    /// The "internet" router (public addresses, no NAT) of the servers.
    pub inet: Router,
    /// The device running the rendezvous server and coturn.
    pub server: Device,
    /// Rendezvous URL.
    pub signal_url: String,
    /// coturn's two STUN/TURN addresses (primary, alternate), port 3478.
    pub coturn: [SocketAddr; 2],
    /// The rendezvous server's plain STUN responder (no RFC 5780).
    pub plain_stun: SocketAddr,
    /// The rendezvous device's IPv6 address on eth0: the rendezvous server (HTTP on
    /// port 8080) and its STUN responder (3480) listen there too.
    pub server_v6: Ipv6Addr,
    /// The STUN set-up [`World::config`] uses.
    pub stun: StunSetup,
    /// coturn's IPv6 STUN/TURN address (port 3478), with [`WorldOptions::coturn_v6`].
    pub coturn_v6: Option<SocketAddr>,
    /// coturn's command line as started (README command + lab files + extras).
    pub coturn_argv: Vec<String>,
    signal: Option<SignalServer>,
    turn: Option<tokio::process::Child>,
    dir: std::path::PathBuf,
    id: u32,
    sites: AtomicU32,
}

impl World {
    /// Builds the internet part. Must run inside a tokio runtime.
    pub async fn new(opts: WorldOptions) -> Result<World> {
        let id = WORLD.fetch_add(1, Ordering::Relaxed);
        // Static IPv6 (no DAD, no router advertisements): addresses are usable the
        // moment a namespace is built, so no test waits out a tentative address.
        let lab = Lab::builder()
            .allow_real_root()
            .ipv6_profile(Ipv6Profile::Deterministic)
            .build()
            .await?;
        let inet = lab
            .add_router("inet")
            .preset(RouterPreset::Public)
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
        let server_v6 = server
            .iface("eth0")
            .and_then(|i| i.ip6())
            .context("eth0 IPv6 address")?;
        // Both listen on `[::]` (dual-stack), as `stunfwd signal` does by default.
        let http: SocketAddr = (Ipv6Addr::UNSPECIFIED, 8080).into();
        let stun_any: SocketAddr = (Ipv6Addr::UNSPECIFIED, 3480).into();
        let stun: SocketAddr = (ip0, 3480).into();
        let signal = server
            .spawn(move |_| async move {
                SignalServer::start(SignalServerConfig {
                    http,
                    stun: Some(stun_any),
                    ..SignalServerConfig::default()
                })
                .await
            })?
            .await??;
        let signal_url = format!("http://{ip0}:8080/");
        let dir = std::env::temp_dir().join(format!("stunfwd-lab-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // coturn exactly as the README prints it; the lab only adds its own files.
        let mut argv = coturn::argv(coturn::README, ip0.into(), ip1.into(), TURN_PASSWORD)?;
        argv.extend(coturn::lab_extras(&dir));
        let coturn_v6 = opts.coturn_v6.then(|| SocketAddr::from((server_v6, 3478)));
        if let Some(v6) = coturn_v6 {
            argv.extend(["--listening-ip".into(), v6.ip().to_string()]);
        }
        argv.extend(opts.coturn_args.iter().cloned());
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdout(Stdio::null())
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
            plain_stun: stun,
            server_v6,
            coturn_v6,
            stun: opts.stun,
            coturn_argv: argv,
            signal: Some(signal),
            turn: Some(turn),
            dir,
            id,
            sites: AtomicU32::new(0),
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
        bail!(
            "coturn did not answer STUN on {target} within 5 s; its log:\n{}",
            std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
        )
    }

    /// coturn's log so far (for diagnostics).
    pub fn coturn_log(&self) -> String {
        // coturn names its log after the file given, with a date inserted unless
        // --simple-log; the lab passes --simple-log.
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Builds a site: its ISP router on the IX, the CGNAT if any, the NAT router
    /// and the devices.
    pub async fn add_site(&self, spec: SiteSpec) -> Result<Site> {
        let n = self.sites.fetch_add(1, Ordering::Relaxed);
        if spec.ipv6 && spec.cgnat.is_some() {
            bail!("a dual-stack site behind a CGNAT is not built (patchbay routes IPv6 to one level of routers below the IX)");
        }
        let mut isp = self
            .lab
            .add_router(&format!("{}-isp", spec.name))
            .preset(if spec.ipv6 {
                RouterPreset::Public
            } else {
                RouterPreset::PublicV4
            });
        if spec.port_mapper.is_some() {
            let [a, b] = miniupnpd::PUBLIC_BASE;
            isp = isp.downstream_cidr(Ipv4Net::new(Ipv4Addr::new(a, b, n as u8, 0), 24)?);
        }
        let isp = isp.build().await?;
        // Routers ignore ICMP redirects, so every packet between sites takes the
        // routed path through the IX's namespace (hop counts stay fixed).
        sysctl(&isp, "net.ipv4.conf.all.accept_redirects", "0").await?;
        sysctl(&isp, "net.ipv4.conf.default.accept_redirects", "0").await?;
        let mut upstream = isp.id();
        let cgnat = match spec.cgnat {
            Some(kind) => {
                let cidr = Ipv4Net::new(Ipv4Addr::new(100, 64 + (n / 256) as u8, n as u8, 0), 24)?;
                let cg = self
                    .lab
                    .add_router(&format!("{}-cgn", spec.name))
                    .nat(Nat::Custom(kind.config(spec.udp_timeout)))
                    .downstream_cidr(cidr)
                    .upstream(isp.id())
                    .build()
                    .await?;
                apply_kind(&cg, kind, spec.udp_timeout).await?;
                upstream = cg.id();
                Some(cg)
            }
            None => None,
        };
        if spec.hairpin && !spec.kind.can_hairpin() {
            bail!(
                "patchbay hairpins only endpoint-independent NATs, not {}",
                spec.kind
            );
        }
        let mut builder = self.lab.add_router(&spec.name);
        if spec.ipv6 {
            // `Public` for its global IPv6 downstream (a /64 of 2001:db8:1::/48, routed
            // from the IX) and dual stack; IPv4 stays private and NATed as on any site
            // (10.200.N.0/24, which no other namespace routes).
            builder = builder
                .preset(RouterPreset::Public)
                .downstream_cidr(Ipv4Net::new(Ipv4Addr::new(10, 200, n as u8, 0), 24)?);
        }
        let router = builder
            .nat(Nat::Custom(
                spec.kind.config_with(spec.udp_timeout, spec.hairpin),
            ))
            .upstream(upstream)
            .build()
            .await?;
        apply_kind(&router, spec.kind, spec.udp_timeout).await?;
        if spec.ipv6 {
            nft(&router, &ipv6_firewall_rules(&wan_name(&router)?)).await?;
        }
        let mut devices = Vec::new();
        for i in 0..spec.devices {
            devices.push(
                self.lab
                    .add_device(&format!("{}-d{i}", spec.name))
                    .iface("eth0", router.id())
                    .build()
                    .await?,
            );
        }
        let miniupnpd = match spec.port_mapper {
            Some(service) => {
                let dir = self.dir.join(format!("miniupnpd-{}", spec.name));
                Some(Miniupnpd::start(&router, service, dir).await?)
            }
            None => None,
        };
        Ok(Site {
            spec,
            isp,
            cgnat,
            router,
            devices,
            miniupnpd,
        })
    }

    /// A NAT router of `kind` (behind its own ISP router) with `devices` devices.
    pub async fn site(
        &self,
        name: &str,
        kind: NatKind,
        devices: usize,
        udp_timeout: Option<u32>,
    ) -> Result<(Router, Vec<Device>)> {
        let mut spec = SiteSpec::new(name, kind).devices(devices);
        spec.udp_timeout = udp_timeout;
        let site = self.add_site(spec).await?;
        Ok((site.router, site.devices))
    }

    /// A double-NAT site: a home router of `home` kind behind a port-restricted
    /// (EIM + APDF) carrier-grade NAT whose downstream is in 100.64.0.0/10.
    pub async fn site_behind_cgnat(
        &self,
        name: &str,
        home: NatKind,
        devices: usize,
    ) -> Result<Site> {
        self.add_site(
            SiteSpec::new(name, home)
                .devices(devices)
                .behind_cgnat(NatKind::PortRestricted),
        )
        .await
    }

    /// The `stunServers` of a STUN set-up.
    pub fn stun_servers(&self, setup: StunSetup) -> Vec<String> {
        match setup {
            StunSetup::Rfc5780 => vec![self.coturn[0].to_string(), self.coturn[1].to_string()],
            StunSetup::Plain => vec![self.plain_stun.to_string()],
        }
    }

    /// The `relay` config for coturn with the lab's credentials.
    pub fn relay_json(&self) -> serde_json::Value {
        serde_json::json!({
            "url": format!("turn:{}?transport=udp", self.coturn[0]),
            "username": TURN_USER,
            "credential": TURN_PASSWORD,
        })
    }

    /// A peer config for this world with its STUN set-up (default bind: every
    /// interface, like a user's); `extra` keys are added or replace ours.
    pub fn config(&self, mode: &str, room: &str, extra: serde_json::Value) -> Config {
        self.config_with(self.stun, mode, room, extra)
    }

    /// [`World::config`] with the given STUN set-up.
    pub fn config_with(
        &self,
        stun: StunSetup,
        mode: &str,
        room: &str,
        extra: serde_json::Value,
    ) -> Config {
        let mut v = serde_json::json!({
            "mode": mode,
            "room": room,
            "secret": format!("lab secret {room}"),
            "signalUrl": self.signal_url,
            "stunServers": self.stun_servers(stun),
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
        nft(
            router,
            &format!(
                "table inet stunfwd_loss {{\n chain lossy {{\n  type filter hook forward priority -10; policy accept;\n  meta l4proto udp numgen random mod 1000 < {per_mille} drop\n }}\n}}\n"
            ),
        )
        .await
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

/// The nftables rules of a dual-stack site's IPv6 firewall on interface `wan`: a
/// stateful filter that forwards what the devices send and only the return traffic
/// of it (RFC 6092's "simple security"), and drops every other packet from outside;
/// no NAT66. Packets for the router itself (ICMPv6, neighbour discovery) are left
/// alone.
pub fn ipv6_firewall_rules(wan: &str) -> String {
    format!(
        "table ip6 stunfwd_fw6 {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  iif \"{wan}\" ct state established,related accept\n  iif \"{wan}\" drop\n }}\n}}\n"
    )
}

/// The uplink interface's name of `router`.
fn wan_name(router: &Router) -> Result<String> {
    router
        .interfaces()
        .first()
        .map(|i| i.name().to_owned())
        .context("router without uplink")
}

/// Replaces patchbay's NAT rules of `router` with `kind`'s own, when it has some.
async fn apply_kind(router: &Router, kind: NatKind, udp_timeout: Option<u32>) -> Result<()> {
    let wan = wan_name(router)?;
    let wan_ip = router
        .uplink_ip()
        .context("router without uplink address")?;
    let timeout = kind.config(udp_timeout).timeouts.udp_stream;
    if let Some(rules) = kind.custom_rules(&wan, wan_ip, timeout) {
        nft(router, &rules).await?;
    }
    Ok(())
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

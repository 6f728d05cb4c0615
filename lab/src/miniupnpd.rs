//! A real miniupnpd (Debian's 2.3.1, nftables backend) on a lab NAT router, serving
//! UPnP-IGD, NAT-PMP or PCP to the devices behind it.
//!
//! Facts this module relies on (checked 2026-11-30, see lab/README.md):
//! - miniupnpd 2.3.1 refuses a WAN address in a reserved range (patchbay's
//!   198.18.0.0/15, the TEST-NETs, 100.64.0.0/10): "Port forwarding is impossible", and
//!   `ext_ip=` with such an address is a start-up error. It has no option to allow
//!   them (`ext_allow_private_ipv4` came later). So a site with a port mapper gets its
//!   public addresses from [`PUBLIC_BASE`], which miniupnpd takes for public.
//! - `enable_natpmp=yes` serves NAT-PMP and PCP on port 5351 together; there is no
//!   switch for one of them. [`Service::NatPmp`] emulates a router without PCP by
//!   refusing PCP's packets (version byte 2) with an ICMP port unreachable.
//! - miniupnpd adds its rules to chains it is told about but does not hook them:
//!   we create them (like Debian's nft_init.sh) in a table of our own, and let the
//!   flows its redirects took through the NAT's forward filter, as a router's firewall
//!   does for its port forwards ([`allow_forwarded`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use patchbay::Router;

use crate::net::{nft, router_output};

/// Sites with a port mapper take their public /24s from 11.17.0.0/16, a range
/// miniupnpd does not consider reserved (any unreserved range would do: the lab's
/// namespaces have no route to the real internet).
pub const PUBLIC_BASE: [u8; 2] = [11, 17];

/// The nftables table miniupnpd writes its rules to in the router.
pub const TABLE: &str = "stunfwd_upnp";

/// The conntrack mark of flows one of miniupnpd's redirects took.
const FORWARDED: u32 = 0x17;

/// Which protocol the router offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// UPnP IGD only (`enable_natpmp=no`).
    Upnp,
    /// NAT-PMP only: miniupnpd's NAT-PMP/PCP service with PCP refused.
    NatPmp,
    /// PCP (and NAT-PMP, which the same service answers); no UPnP.
    Pcp,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 3] = [Service::Upnp, Service::NatPmp, Service::Pcp];

    /// `upnp`, `natpmp` or `pcp` (site and cell names).
    pub fn name(self) -> &'static str {
        match self {
            Service::Upnp => "upnp",
            Service::NatPmp => "natpmp",
            Service::Pcp => "pcp",
        }
    }

    /// The protocol name stunfwd reports for a mapping made with this service.
    pub fn protocol(self) -> &'static str {
        match self {
            Service::Upnp => "UPnP-IGD",
            Service::NatPmp => "NAT-PMP",
            Service::Pcp => "PCP",
        }
    }
}

/// A running miniupnpd; killed (and its files removed) on drop.
pub struct Miniupnpd {
    /// What it serves.
    pub service: Service,
    child: Option<std::process::Child>,
    dir: PathBuf,
}

impl Miniupnpd {
    /// Starts miniupnpd on `router` (a NAT router whose uplink address miniupnpd takes
    /// for public) for the devices on its LAN, after setting up its nftables chains.
    pub async fn start(router: &Router, service: Service, dir: PathBuf) -> Result<Miniupnpd> {
        let wan = router
            .interfaces()
            .first()
            .map(|i| i.name().to_owned())
            .context("router without uplink")?;
        let lan_gw = router.downstream_gw().context("router without LAN")?;
        let lan = lan_iface(router, lan_gw).await?;
        let cidr = router.downstream_cidr().context("router without LAN")?;
        std::fs::create_dir_all(&dir)?;
        nft(router, &chains(service, &wan)).await?;
        allow_forwarded(router).await?;
        let conf = dir.join("miniupnpd.conf");
        std::fs::write(&conf, config(service, &wan, &lan, &cidr.to_string(), &dir))?;
        let mut cmd = std::process::Command::new("miniupnpd");
        cmd.arg("-f")
            .arg(&conf)
            .arg("-P")
            .arg(dir.join("miniupnpd.pid"))
            // Foreground with debug output, kept for diagnostics.
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("miniupnpd.log"))?);
        let child = router.spawn_command_sync(cmd)?;
        let mut me = Miniupnpd {
            service,
            child: Some(child),
            dir,
        };
        me.wait_ready(router, lan_gw).await?;
        Ok(me)
    }

    /// Waits until it listens (its HTTP port for UPnP, 5351 for NAT-PMP/PCP).
    async fn wait_ready(&mut self, router: &Router, lan_gw: Ipv4Addr) -> Result<()> {
        let want = match self.service {
            Service::Upnp => format!("{lan_gw}:"),
            Service::NatPmp | Service::Pcp => ":5351".to_owned(),
        };
        for _ in 0..100 {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("miniupnpd exited ({status}); its log:\n{}", self.log());
                }
            }
            let listening = router_output(router, "ss", &["-lntu"]).await?;
            if listening.lines().any(|l| l.contains(&want)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "miniupnpd did not listen within 2 s; its log:\n{}",
            self.log()
        )
    }

    /// Its debug log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("miniupnpd.log")).unwrap_or_default()
    }
}

impl Drop for Miniupnpd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The redirect rules miniupnpd holds in `router` now (its prerouting chain), one per
/// line: what a mapping leaves in the router, and what its deletion removes.
pub async fn redirects(router: &Router) -> Result<Vec<String>> {
    let out = router_output(
        router,
        "nft",
        &["list", "chain", "inet", TABLE, "prerouting_miniupnpd"],
    )
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("dnat"))
        .map(str::to_owned)
        .collect())
}

/// The router's interface that holds `ip` (patchbay names LAN bridges itself).
async fn lan_iface(router: &Router, ip: Ipv4Addr) -> Result<String> {
    let out = router_output(router, "ip", &["-o", "-4", "addr", "show"]).await?;
    let needle = format!(" {ip}/");
    out.lines()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .with_context(|| format!("no interface with {ip} in:\n{out}"))
}

/// miniupnpd's configuration for `service`.
fn config(service: Service, wan: &str, lan: &str, lan_cidr: &str, dir: &std::path::Path) -> String {
    let (upnp, natpmp) = match service {
        Service::Upnp => ("yes", "no"),
        Service::NatPmp | Service::Pcp => ("no", "yes"),
    };
    format!(
        "ext_ifname={wan}\n\
         listening_ip={lan}\n\
         http_port=0\n\
         enable_upnp={upnp}\n\
         enable_natpmp={natpmp}\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         min_lifetime=120\n\
         max_lifetime=86400\n\
         lease_file={lease}\n\
         upnp_table_name={TABLE}\n\
         upnp_nat_table_name={TABLE}\n\
         upnp_forward_chain=forward_miniupnpd\n\
         upnp_nat_chain=prerouting_miniupnpd\n\
         upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
         uuid=3b1d2c4e-0f17-4e5a-9a3b-{uuid:012x}\n\
         allow 1024-65535 {lan_cidr} 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        lease = dir.join("leases").display(),
        uuid = std::process::id() as u64 * 1000 + u64::from(wan.len() as u8),
    )
}

/// The chains miniupnpd fills, hooked like Debian's nft_init.sh does, each one priority
/// step ahead of patchbay's own so a port forward is applied first; for
/// [`Service::NatPmp`], the refusal of PCP. A new inbound flow is marked
/// [`FORWARDED`] before miniupnpd's redirects and unmarked after them: a `dnat` ends
/// the chain, so only flows a redirect took keep the mark.
fn chains(service: Service, wan: &str) -> String {
    let no_pcp = match service {
        // PCP's first byte is its version, 2 (NAT-PMP's is 0).
        Service::NatPmp => {
            "  chain input {\n    type filter hook input priority -1; policy accept;\n    \
             udp dport 5351 @th,64,8 2 reject\n  }\n"
        }
        Service::Upnp | Service::Pcp => "",
    };
    format!(
        "table inet {TABLE} {{\n\
         {no_pcp}\
         \x20 chain forward {{\n    type filter hook forward priority -1; policy accept;\n    jump forward_miniupnpd\n  }}\n\
         \x20 chain forward_miniupnpd {{\n  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority -101; policy accept;\n    \
         iif \"{wan}\" ct mark set {FORWARDED}\n    jump prerouting_miniupnpd\n    ct mark set 0\n  }}\n\
         \x20 chain prerouting_miniupnpd {{\n  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority 99; policy accept;\n    jump postrouting_miniupnpd\n  }}\n\
         \x20 chain postrouting_miniupnpd {{\n  }}\n\
         }}\n"
    )
}

/// Lets flows a redirect of miniupnpd took ([`FORWARDED`]) through every forward filter
/// of `router` (patchbay's filtering NATs drop new inbound flows). Not `ct status
/// dnat`: patchbay's endpoint-independent NATs DNAT every inbound packet to a mapped
/// port themselves and filter afterwards, so that would make them full cones.
async fn allow_forwarded(router: &Router) -> Result<()> {
    let ruleset = router_output(router, "nft", &["list", "ruleset"]).await?;
    let mut script = String::new();
    let mut table = None;
    let mut chain = None;
    for line in ruleset.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("table ") {
            table = rest.split(" {").next().map(str::to_owned);
        } else if let Some(rest) = l.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().map(str::to_owned);
        } else if l.starts_with("type filter hook forward") {
            if let (Some(t), Some(c)) = (&table, &chain) {
                if !t.ends_with(TABLE) {
                    script.push_str(&format!("insert rule {t} {c} ct mark {FORWARDED} accept\n"));
                }
            }
        }
    }
    if script.is_empty() {
        bail!("no forward filter found in the router's ruleset:\n{ruleset}");
    }
    nft(router, &script).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natpmp_alone_refuses_pcp() {
        assert!(chains(Service::NatPmp, "wan").contains("@th,64,8 2 reject"));
        assert!(!chains(Service::Pcp, "wan").contains("reject"));
        let c = config(
            Service::Upnp,
            "eth0",
            "br-lan",
            "10.0.0.0/24",
            "/tmp/x".as_ref(),
        );
        assert!(c.contains("enable_upnp=yes\nenable_natpmp=no"));
        assert!(c.contains("upnp_nat_table_name=stunfwd_upnp"));
    }
}

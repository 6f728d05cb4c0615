//! The default gateway: the only host port mapping ever asks.

use std::net::Ipv4Addr;

/// The IPv4 default gateway from the kernel's routing table (Linux), or `None` (no
/// default route, or another OS: no port mapping there yet).
pub fn default_gateway() -> Option<Ipv4Addr> {
    if cfg!(target_os = "linux") {
        // `/proc/net` is the network namespace of the process's main thread; the
        // calling thread's may differ (an engine started inside a namespace).
        let table = std::fs::read_to_string("/proc/thread-self/net/route")
            .or_else(|_| std::fs::read_to_string("/proc/net/route"))
            .ok()?;
        parse_proc_net_route(&table)
    } else {
        None
    }
}

/// The gateway of the first default route (destination and mask 0, flags UP and
/// GATEWAY) in the text of `/proc/net/route`.
pub fn parse_proc_net_route(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u16 = 0x1;
    const RTF_GATEWAY: u16 = 0x2;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gateway, flags, mask) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
        let flags = u16::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || *mask != "00000000" || flags & (RTF_UP | RTF_GATEWAY) != 3 {
            return None;
        }
        let raw = u32::from_str_radix(gateway, 16).ok()?;
        // The kernel prints the address's network-order bytes read as a native u32.
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_proc_net_route(table),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        let no_default = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                          eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(parse_proc_net_route(no_default), None);
        assert_eq!(parse_proc_net_route(""), None);
    }
}

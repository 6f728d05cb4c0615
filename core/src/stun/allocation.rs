//! How a NAT picks the public port of a new mapping (port allocation), measured from a
//! few fresh sockets: kept from the local port (port-preserving), the next one each
//! time (sequential), or anything (random). Birthday punching aims at the ports a
//! sequential NAT hands out next; `stunfwd nat` reports it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::message::{self, Parsed};

/// How a NAT allocates public ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Allocation {
    /// The public port is the local port.
    Preserving,
    /// Each new mapping gets the port `delta` after the last one.
    Sequential {
        /// The step between consecutive mappings (usually +1).
        delta: i32,
    },
    /// No pattern.
    Random,
    /// Not measured (too few answers).
    Unknown,
}

impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocation::Preserving => f.write_str("port-preserving"),
            Allocation::Sequential { delta } => write!(f, "sequential ({delta:+})"),
            Allocation::Random => f.write_str("random"),
            Allocation::Unknown => f.write_str("unknown"),
        }
    }
}

/// The largest step still taken for sequential allocation (other hosts behind the NAT
/// may take a few ports between two of ours).
pub const MAX_STEP: i32 = 16;
/// How many fresh sockets [`measure`] asks from.
pub const SAMPLES: usize = 4;

/// Classifies `(local port, mapped port)` pairs of consecutive new mappings, in the
/// order they were made; at least three are needed.
pub fn classify(pairs: &[(u16, u16)]) -> Allocation {
    if pairs.len() < 3 {
        return Allocation::Unknown;
    }
    if pairs.iter().all(|(l, m)| l == m) {
        return Allocation::Preserving;
    }
    let steps: Vec<i32> = pairs
        .windows(2)
        .map(|w| i32::from(w[1].1) - i32::from(w[0].1))
        .collect();
    let first = steps[0];
    if first != 0 && first.abs() <= MAX_STEP && steps.iter().all(|s| *s == first) {
        Allocation::Sequential { delta: first }
    } else {
        Allocation::Random
    }
}

/// Asks `server` from [`SAMPLES`] fresh sockets on `bind_ip`, one after the other, and
/// classifies the ports it saw. Sockets whose query goes unanswered within a second
/// are left out.
pub async fn measure(server: SocketAddr, bind_ip: std::net::IpAddr) -> Allocation {
    sample(server, bind_ip).await.0
}

/// Like [`measure`], also returning the public port of the last mapping made (where a
/// sequential NAT continues from).
pub async fn sample(server: SocketAddr, bind_ip: std::net::IpAddr) -> (Allocation, Option<u16>) {
    let mut pairs = Vec::new();
    for _ in 0..SAMPLES {
        let Ok(sock) = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await else {
            continue;
        };
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        if let Some(mapped) = query(&sock, server).await {
            pairs.push((local.port(), mapped.port()));
        }
    }
    (classify(&pairs), pairs.last().map(|(_, m)| *m))
}

/// The public port of one new mapping, made from a fresh socket on `bind_ip` toward
/// `server` (`None` when it does not answer): behind a sequential NAT, the port the
/// next mapping follows.
pub async fn fresh_mapping(server: SocketAddr, bind_ip: std::net::IpAddr) -> Option<u16> {
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0))
        .await
        .ok()?;
    query(&sock, server).await.map(|m| m.port())
}

/// One Binding request from `sock` (two tries); the mapped address it reports.
async fn query(sock: &tokio::net::UdpSocket, server: SocketAddr) -> Option<SocketAddr> {
    let tid = message::new_tid();
    let request = message::binding_request(tid);
    let mut buf = [0u8; 1500];
    for _ in 0..2 {
        sock.send_to(&request, server).await.ok()?;
        let answer = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                let (n, from) = sock.recv_from(&mut buf).await.ok()?;
                if from != server {
                    continue;
                }
                if let Some(Parsed::Success {
                    tid: t,
                    mapped: Some(m),
                    ..
                }) = message::parse(&buf[..n])
                {
                    if t == tid {
                        return Some(m);
                    }
                }
            }
        })
        .await;
        if let Ok(Some(m)) = answer {
            return Some(m);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_three_behaviours() {
        assert_eq!(
            classify(&[(5000, 5000), (5001, 5001), (6000, 6000)]),
            Allocation::Preserving
        );
        assert_eq!(
            classify(&[(5000, 20010), (5001, 20011), (6000, 20012), (7, 20013)]),
            Allocation::Sequential { delta: 1 }
        );
        assert_eq!(
            classify(&[(5000, 20012), (5001, 20010), (6000, 20008)]),
            Allocation::Sequential { delta: -2 }
        );
        assert_eq!(
            classify(&[(5000, 41234), (5001, 2211), (6000, 60001)]),
            Allocation::Random
        );
        // One port kept, the others not: no pattern.
        assert_eq!(
            classify(&[(5000, 5000), (5001, 33000), (6000, 6000)]),
            Allocation::Random
        );
        assert_eq!(classify(&[(1, 1), (2, 2)]), Allocation::Unknown);
        assert_eq!(
            Allocation::Sequential { delta: 1 }.to_string(),
            "sequential (+1)"
        );
    }
}

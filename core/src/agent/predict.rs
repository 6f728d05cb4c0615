//! Port prediction between two symmetric NATs that allocate ports regularly
//! (sequentially, or keeping the local port), without I/O. frp's xtcp modes 1, 3 and 4
//! aim at such NATs; our exchange is built so that neither side's guess depends on the
//! other's:
//!
//! 1. The client measures its NAT's allocation and offers `predict`: the public ports
//!    its prediction socket's next mappings will get ([`predicted_ports`]): the
//!    [`WINDOW`] ports after the last one STUN saw (sequential), or the socket's own
//!    local port (port-preserving).
//! 2. The server lays a *comb*: one socket per predicted port, each sending one opener
//!    (at the low TTL of every opener, so the client's router never sees it) toward the
//!    client's public IP at that port. Its NAT maps each on a port the server can name
//!    ([`comb_ports`]): the local ports (port-preserving), or the ports between two
//!    STUN answers taken just before and after the comb (sequential, when nothing else
//!    took a port in between). It offers them as `comb`.
//! 3. The client measures its NAT's next port once more from a fresh socket, which
//!    tells how many ports other flows took since its offer ([`shot_index`]), and sends
//!    its check from the prediction socket to the comb tooth made for exactly that
//!    port. Its NAT maps the check on that port, the server's NAT sees it come from the
//!    address the tooth's mapping expects, and the tooth's socket answers: that pair
//!    carries the tunnel. A shot unanswered is measured and sent again.
//!
//! A NAT with random ports on either side defeats it: the side with random ports can
//! neither name its comb nor predict its shot, and a spray over both sides' random
//! ports would need about a hundred thousand packets and conntrack entries (docs in
//! `docs/architecture.md`); such pairs relay.

use crate::stun::allocation::Allocation;

/// How many ports a sequential client predicts: other flows may take up to
/// `WINDOW - 1` ports between its offer and its shot.
pub const WINDOW: usize = 16;
/// The lowest port a NAT hands out (see `agent::birthday`).
const LOWEST: i32 = crate::agent::birthday::LOWEST_PORT as i32;

/// True when `alloc` is a pattern port prediction can follow.
pub fn regular(alloc: Allocation) -> bool {
    matches!(
        alloc,
        Allocation::Preserving | Allocation::Sequential { .. }
    )
}

/// The client's `predict` list: for a sequential NAT the [`WINDOW`] ports after
/// `last` (the last mapped port STUN saw), for a port-preserving one the prediction
/// socket's `local` port (it has sent nothing yet, so its first mapping keeps it);
/// nothing for any other allocation.
pub fn predicted_ports(alloc: Allocation, last: u16, local: u16) -> Vec<u16> {
    match alloc {
        Allocation::Preserving => vec![local],
        Allocation::Sequential { delta } => (1..=WINDOW as i32)
            .map(|k| i32::from(last) + delta * k)
            .take_while(|p| (LOWEST..=i32::from(u16::MAX)).contains(p))
            .map(|p| p as u16)
            .collect(),
        Allocation::Random | Allocation::Unknown => Vec::new(),
    }
}

/// The server's `comb` list: the public ports its NAT gave the comb's sockets (whose
/// local ports are `locals`, in the order their openers left). Port-preserving: the
/// local ports. Sequential: the ports after `before` (a fresh mapping just before the
/// comb), if `after` (one just after) shows that the comb took exactly its own ports;
/// `None` otherwise (another flow took one in between, so no tooth can be named).
pub fn comb_ports(
    alloc: Allocation,
    before: Option<u16>,
    after: Option<u16>,
    locals: &[u16],
) -> Option<Vec<u16>> {
    match alloc {
        Allocation::Preserving => Some(locals.to_vec()),
        Allocation::Sequential { delta } => {
            let (before, after) = (i32::from(before?), i32::from(after?));
            let n = locals.len() as i32;
            if after != before + delta * (n + 1) {
                return None;
            }
            (1..=n)
                .map(|k| u16::try_from(before + delta * k).ok())
                .collect()
        }
        Allocation::Random | Allocation::Unknown => None,
    }
}

/// Which of the client's predicted ports (an index into `predict`) its next mapping
/// gets, now that a fresh mapping got `now`: for a sequential NAT the port after `now`;
/// `None` when that is not among the predicted (more flows than the window took
/// ports). A port-preserving client always shoots from its first predicted port.
pub fn shot_index(alloc: Allocation, predict: &[u16], now: Option<u16>) -> Option<usize> {
    match alloc {
        Allocation::Preserving => (!predict.is_empty()).then_some(0),
        Allocation::Sequential { delta } => {
            let next = i32::from(now?) + delta;
            predict.iter().position(|p| i32::from(*p) == next)
        }
        Allocation::Random | Allocation::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: Allocation = Allocation::Sequential { delta: 1 };

    #[test]
    fn a_sequential_client_predicts_the_window_after_its_last_port() {
        let p = predicted_ports(SEQ, 20010, 40000);
        assert_eq!(p.len(), WINDOW);
        assert_eq!((p[0], p[WINDOW - 1]), (20011, 20026));
        let down = predicted_ports(Allocation::Sequential { delta: -2 }, 30000, 1);
        assert_eq!(&down[..3], &[29998, 29996, 29994]);
        // The window stops at the top of the port range.
        assert_eq!(predicted_ports(SEQ, 65533, 1), vec![65534, 65535]);
        assert_eq!(
            predicted_ports(Allocation::Preserving, 20010, 40000),
            vec![40000]
        );
        assert!(predicted_ports(Allocation::Random, 20010, 40000).is_empty());
        assert!(predicted_ports(Allocation::Unknown, 20010, 40000).is_empty());
    }

    #[test]
    fn a_sequential_comb_is_named_only_when_nothing_took_a_port_in_between() {
        let locals = [5000, 5001, 5002];
        assert_eq!(
            comb_ports(SEQ, Some(100), Some(104), &locals),
            Some(vec![101, 102, 103])
        );
        // Another flow took a port: the teeth cannot be told apart.
        assert_eq!(comb_ports(SEQ, Some(100), Some(105), &locals), None);
        assert_eq!(comb_ports(SEQ, None, Some(104), &locals), None);
        assert_eq!(
            comb_ports(Allocation::Preserving, None, None, &locals),
            Some(locals.to_vec())
        );
        assert_eq!(
            comb_ports(Allocation::Random, Some(1), Some(5), &locals),
            None
        );
    }

    #[test]
    fn the_shot_follows_the_ports_other_flows_took() {
        let predict = predicted_ports(SEQ, 20010, 1);
        // Nothing else took a port: the fresh mapping took 20011, the shot gets 20012.
        assert_eq!(shot_index(SEQ, &predict, Some(20011)), Some(1));
        assert_eq!(shot_index(SEQ, &predict, Some(20010)), Some(0));
        assert_eq!(shot_index(SEQ, &predict, Some(20025)), Some(WINDOW - 1));
        assert_eq!(shot_index(SEQ, &predict, Some(20026)), None);
        assert_eq!(shot_index(SEQ, &predict, None), None);
        assert_eq!(shot_index(Allocation::Preserving, &[7000], None), Some(0));
        assert_eq!(shot_index(Allocation::Random, &predict, Some(20011)), None);
        assert!(regular(SEQ) && regular(Allocation::Preserving));
        assert!(!regular(Allocation::Random) && !regular(Allocation::Unknown));
    }
}

//! Receive batches: taking STUN out of a batch quinn is about to read, and closing
//! the gaps it leaves; draining a socket that has no QUIC endpoint.

use std::future::poll_fn;
use std::io::IoSliceMut;
use std::sync::Arc;

use quinn::AsyncUdpSocket;

use quinn::udp::RecvMeta;

use super::DemuxSocket;
use crate::stun::message::is_stun_first_byte;

/// Most slots of quinn's receive buffer one read of the socket fills.
///
/// quinn gives `poll_recv` 32 slots (`BATCH_SIZE`), each as large as 64 GRO segments
/// of its largest UDP payload: 3 MB per endpoint, and a server peer has an endpoint per
/// client. A read of k datagrams writes into the first k slots, and the pages it
/// touches stay resident, so after bulk traffic each client could hold up to 3 MB of
/// the server's memory. Eight slots bound that at a quarter (while glibc hands the
/// buffer out fresh from `mmap`; a reused heap chunk is zeroed whole) and still take up to
/// 8 × 64 datagrams per system call with GRO (docs/benchmarks.md, "Speed work, round
/// two": server RSS after the burst rows 16–19 → 13 MB).
pub(super) const RECV_SLOTS: usize = 8;

impl DemuxSocket {
    /// Diverts the STUN segments of datagram `m` (in `buf`) to the STUN channel; true
    /// when nothing else is left in it.
    pub(super) fn divert_stun(&self, m: &RecvMeta, buf: &[u8]) -> bool {
        let stride = m.stride.max(1);
        let mut all_stun = m.len > 0;
        for start in (0..m.len).step_by(stride) {
            let segment = &buf[start..(start + stride).min(m.len)];
            if segment.first().is_some_and(|b| is_stun_first_byte(*b)) {
                self.divert(m.addr, segment, false);
            } else {
                all_stun = false;
            }
        }
        all_stun
    }
}

/// Moves datagram `i` (described by `m`) to position `kept` of the receive batch.
pub(super) fn keep(
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    i: usize,
    kept: usize,
    m: RecvMeta,
) {
    if kept != i {
        let (head, tail) = bufs.split_at_mut(i);
        head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
    }
    meta[kept] = m;
}

/// Drains a [`DemuxSocket`] that has no QUIC endpoint on it, so that its STUN datagrams
/// reach the STUN channel (the endpoint driver does this in an engine).
pub(crate) async fn drain(socket: Arc<DemuxSocket>) {
    let mut storage = vec![0u8; 65_536];
    loop {
        let mut meta = [RecvMeta::default()];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        if poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
            .await
            .is_err()
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

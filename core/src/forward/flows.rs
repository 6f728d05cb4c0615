//! The UDP flow table (issue #19 split it out of `udp.rs`): flows by id with their
//! sinks, insertion under the per-client cap, removal of a flow's own entry only, the
//! bounded log of refusals, and each flow's idle clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use super::local::LocalUdp;

use crate::stats::Meter;
use crate::sync::lock;

/// Where datagrams of a flow go when they come out of the tunnel.
#[derive(Debug, Clone)]
pub(crate) struct FlowSink {
    pub socket: Arc<LocalUdp>,
    /// Client role: the local source address; server role: `None` (connected socket).
    pub dest: Option<SocketAddr>,
    pub meter: Meter,
    pub idle: Arc<IdleClock>,
    /// Set once the sink has left the flow table: copies held elsewhere (the
    /// dispatcher's cache) are stale from then on.
    removed: Arc<AtomicBool>,
}

impl FlowSink {
    pub fn new(
        socket: Arc<LocalUdp>,
        dest: Option<SocketAddr>,
        meter: Meter,
        idle: Arc<IdleClock>,
    ) -> Self {
        FlowSink {
            socket,
            dest,
            meter,
            idle,
            removed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_current(&self) -> bool {
        !self.removed.load(Ordering::Relaxed)
    }
}

/// Live flows by id. Change it through [`insert_flow`] and [`remove_flow`], which
/// mark the sinks that leave it.
/// The table owns the only strong reference to each entry, so a sink (and its socket)
/// is gone once its flow leaves the table, whatever caches it weakly.
pub(crate) type FlowTable = Arc<Mutex<HashMap<u64, Arc<FlowSink>>>>;

pub(crate) fn table(t: &FlowTable) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<FlowSink>>> {
    lock(t)
}

pub(crate) fn insert_flow(t: &FlowTable, id: u64, sink: FlowSink) -> Arc<FlowSink> {
    let sink = Arc::new(sink);
    if let Some(old) = table(t).insert(id, sink.clone()) {
        old.removed.store(true, Ordering::Relaxed);
    }
    sink
}

/// Why [`insert_flow_capped`] refused a flow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The table holds `cap` flows already.
    Full,
    /// A live flow has this id (a client that reuses ids would otherwise open
    /// sockets the cap does not count).
    Duplicate,
}

/// [`insert_flow`] unless the table already holds `cap` flows or a flow with this id
/// (the checks and the insertion under one lock).
pub(crate) fn insert_flow_capped(
    t: &FlowTable,
    id: u64,
    sink: FlowSink,
    cap: usize,
) -> Result<Arc<FlowSink>, Refused> {
    let mut flows = table(t);
    if flows.contains_key(&id) {
        return Err(Refused::Duplicate);
    }
    if flows.len() >= cap {
        return Err(Refused::Full);
    }
    let sink = Arc::new(sink);
    flows.insert(id, sink.clone());
    Ok(sink)
}

/// Logs refused flows at most once per [`Refusals::EVERY`], with how many were
/// refused since: a cap is reached by a burst of new sources, one line each would
/// flood the log.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    last: Option<StdInstant>,
    unlogged: u64,
    /// Client role: sources refused in this period (bounded), so that each counts once.
    sources: std::collections::HashSet<SocketAddr>,
    period: Option<StdInstant>,
}

impl Refusals {
    pub const EVERY: Duration = Duration::from_secs(10);
    /// Most sources remembered per period (a flood of sources is counted more than
    /// once rather than remembered without bound).
    const MAX_SOURCES: usize = 4096;

    /// True when `src` is a source not yet refused in this period.
    pub fn is_new(&mut self, src: SocketAddr) -> bool {
        if self.period.is_none_or(|t| t.elapsed() >= Self::EVERY)
            || self.sources.len() >= Self::MAX_SOURCES
        {
            self.sources.clear();
            self.period = Some(StdInstant::now());
        }
        self.sources.insert(src)
    }

    /// Counts one refusal; true when it should be logged now, with the count of
    /// refusals that line covers.
    pub fn note(&mut self) -> Option<u64> {
        self.unlogged += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(StdInstant::now());
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Removes flow `id` if it is still `own` (a newer flow may have taken the id).
pub(crate) fn remove_flow(t: &FlowTable, id: u64, own: &Arc<FlowSink>) {
    let mut flows = table(t);
    if flows.get(&id).is_some_and(|s| Arc::ptr_eq(s, own)) {
        flows.remove(&id);
    }
    own.removed.store(true, Ordering::Relaxed);
}

/// Milliseconds since the flow's last activity, shared by its tasks.
#[derive(Debug)]
pub(crate) struct IdleClock {
    base: StdInstant,
    last_ms: AtomicU64,
}

impl IdleClock {
    pub fn new() -> Arc<Self> {
        Arc::new(IdleClock {
            base: StdInstant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::stats::Counters;

    async fn sink() -> FlowSink {
        let addr = "127.0.0.1:0".parse().expect("addr");
        let socket = Arc::new(LocalUdp::bind(addr, 1 << 16).expect("bind"));
        let meter = Meter::new(None, Arc::new(Counters::default()));
        FlowSink::new(socket, None, meter, IdleClock::new())
    }

    #[tokio::test]
    async fn the_cap_holds_a_reused_id_is_refused_and_an_old_flow_removes_only_itself() {
        let t: FlowTable = Arc::new(Mutex::new(HashMap::new()));
        let one = insert_flow_capped(&t, 1, sink().await, 2).expect("first");
        let _two = insert_flow_capped(&t, 2, sink().await, 2).expect("second");
        assert_eq!(
            insert_flow_capped(&t, 3, sink().await, 2).err(),
            Some(Refused::Full)
        );
        // A live id again: refused, whatever the cap.
        assert_eq!(
            insert_flow_capped(&t, 1, sink().await, 10).err(),
            Some(Refused::Duplicate)
        );
        // Flow 1 ends: its place is free; a newer flow 1 is not removed by an old task.
        remove_flow(&t, 1, &one);
        assert!(!one.is_current());
        let newer = insert_flow_capped(&t, 1, sink().await, 2).expect("place freed");
        remove_flow(&t, 1, &one);
        assert!(table(&t).get(&1).is_some_and(|s| Arc::ptr_eq(s, &newer)));
        assert!(newer.is_current());
    }

    #[test]
    fn a_refused_source_counts_once_per_period_and_the_log_is_bounded() {
        let mut r = Refusals::default();
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        assert!(r.is_new(a));
        assert!(!r.is_new(a));
        assert!(r.is_new(b));
        assert_eq!(r.note(), Some(1));
        assert_eq!(r.note(), None);
        assert_eq!(r.note(), None);
    }
}

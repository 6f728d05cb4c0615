//! The mapping registry: each mapping's listener task, its counters and its
//! cancellation token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use super::shared::{MappingEntry, Shared};
use crate::config::{Mapping, Proto};
use crate::error::{Error, Result};
use crate::forward;
use crate::stats::{Counters, Meter};
use crate::status::{Event, MappingId, MappingInfo};
use crate::sync::lock;

/// True while something still listens on `addr` (a removed mapping's listener closes
/// asynchronously).
pub(crate) fn port_busy(proto: Proto, addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match proto {
        Proto::Tcp => std::net::TcpListener::bind(addr).is_err(),
        Proto::Udp => std::net::UdpSocket::bind(addr).is_err(),
    }
}
pub(crate) async fn add_mapping(shared: Arc<Shared>, mapping: Mapping) -> Result<MappingId> {
    let id = shared.next_mapping.fetch_add(1, Ordering::Relaxed);
    let counters = Arc::new(Counters::default());
    let meter = Meter::new(Some(counters.clone()), shared.totals.clone());
    let token = shared.root.child_token();
    let what = format!("mapping {mapping}");
    let span = tracing::info_span!("mapping", id, mapping = %mapping);
    let listen = match mapping.proto {
        Proto::Tcp => {
            let listener = crate::socket::bind_tcp(mapping.listen, false)
                .and_then(TcpListener::from_std)
                .map_err(|e| Error::bind(what, mapping.listen, &e))?;
            let listen = listener
                .local_addr()
                .map_err(|e| Error::io("mapping listener", &e))?;
            crate::spawn(
                forward::tcp::run_listener(
                    listener,
                    mapping.clone(),
                    meter,
                    shared.ctx.clone(),
                    token.clone(),
                )
                .instrument(span),
            );
            listen
        }
        Proto::Udp => {
            let socket = forward::local::LocalUdp::bind(
                mapping.listen,
                shared.config.performance.udp_buffer_size,
            )
            .map_err(|e| Error::bind(what, mapping.listen, &e))?;
            let listen = socket
                .local_addr()
                .map_err(|e| Error::io("mapping socket", &e))?;
            crate::spawn(
                forward::udp::run_listener(
                    Arc::new(socket),
                    mapping.clone(),
                    meter,
                    shared.ctx.clone(),
                    token.clone(),
                )
                .instrument(span),
            );
            listen
        }
    };
    let info = MappingInfo {
        id,
        mapping: mapping.clone(),
        listen,
    };
    lock(&shared.mappings).insert(
        id,
        MappingEntry {
            info,
            token,
            counters,
        },
    );
    tracing::info!(mapping = %mapping, %listen, id, "mapping added");
    shared.emit(Event::MappingAdded {
        id,
        spec: mapping.to_string(),
        listen,
    });
    Ok(id)
}

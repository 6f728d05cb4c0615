//! Building an engine's shared state: the tunnel socket, the QUIC endpoint, the STUN
//! agent, the rendezvous client. (Nothing here needs freeing by hand: `Engine::stop`
//! drops the last reference to the [`Shared`] built here, which closes the socket.)

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::accept::accept_loop;
use super::portmap::PortMapper;
use super::responder::stun_dispatch;
use super::shared::{Hub, Incoming, PeerInfo, RejectionReports, Shared, StateCell};
use super::snapshot::snapshot;
use crate::config::{Config, Mode};
use crate::error::{Error, Result};
use crate::forward::Ctx;
use crate::signal::client::SignalClient;
use crate::signal::proto::{Offer, OfferGuard, Role, RoomKey};
use crate::socket::DemuxSocket;
use crate::stats::{Counters, Timings};
use crate::status::State;
use crate::stun::client::StunAgent;
use crate::tunnel::{self, Identity, PinnedPeer};
use crate::turn::allocation::RelayAllocation;

/// Who an engine's shared state is for (issue #18).
pub(crate) enum Part {
    /// The engine itself: a client (with a fresh client id), or a server (its clients'
    /// hub).
    Engine,
    /// A server's session for one client.
    Session {
        /// The client's id.
        client: String,
        /// Told of each of the session's state changes.
        changed: Arc<tokio::sync::Notify>,
        /// The server engine's certificate: every client sees the same server.
        identity: Identity,
    },
}

pub(crate) async fn setup(
    config: Config,
    span: tracing::Span,
    part: Part,
) -> Result<(Arc<Shared>, Incoming)> {
    let role = match config.mode {
        Mode::Client => Role::Client,
        Mode::Server => Role::Server,
    };
    let (client, hub_changed, identity) = match part {
        Part::Session {
            client,
            changed,
            identity,
        } => (Some(client), Some(changed), identity),
        Part::Engine if role == Role::Client => {
            (Some(Offer::new_id()), None, Identity::generate()?)
        }
        Part::Engine => (None, None, Identity::generate()?),
    };
    let key = RoomKey::derive(&config.room, config.secret.as_deref());
    let password = key.stun_password();
    let pinned = PinnedPeer::new();

    let std_socket = bind_tunnel_socket(config.bind, config.performance.udp_buffer_size)?;
    let local_addr = std_socket
        .local_addr()
        .map_err(|e| Error::io("tunnel socket: local address", &e))?;
    let host_candidates = crate::socket::host_candidates(local_addr);
    let metrics_listener = config.metrics_addr.map(crate::metrics::bind).transpose()?;
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| Error::io("metrics: local address", &e))?,
        ),
        None => None,
    };
    // A second handle for punching's TTL-limited openers (`DemuxSocket::send_opener`).
    let raw = std_socket
        .try_clone()
        .map_err(|e| Error::io("tunnel socket: second handle", &e))?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let inner = runtime
        .wrap_udp_socket(std_socket)
        .map_err(|e| Error::io("tunnel socket", &e))?;
    let (demux, stun_rx) = DemuxSocket::new(inner);
    demux.set_raw(raw);
    let server_config = match role {
        Role::Server => Some(tunnel::server_config(
            &identity,
            pinned.clone(),
            &config.performance,
        )?),
        Role::Client => None,
    };
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        tunnel::endpoint_config(),
        server_config,
        demux.clone(),
        runtime,
    )
    .map_err(|e| Error::io("quic endpoint", &e))?;
    let agent = StunAgent::new(demux);
    let root = CancellationToken::new();
    let turn = RelayAllocation::new(agent.clone(), config.relay.clone(), root.clone());
    // The server engine itself carries no tunnel: its sessions map their own ports.
    let is_hub = role == Role::Server && client.is_none();
    let port_mapping = if is_hub {
        crate::config::PortMapping::Off
    } else {
        config.port_mapping
    };
    let portmap = PortMapper::start(port_mapping, local_addr, root.clone());

    let signaling_requests = Arc::new(AtomicU64::new(0));
    // With a secret the rendezvous sees a name derived from the room key, so knowing
    // the room name alone finds (and can overwrite or delete) nothing.
    let mailbox = match config.secret.as_deref() {
        Some(s) if !s.is_empty() => key.mailbox_name(),
        _ => config.room.to_string(),
    };
    let room_signal = SignalClient::with_ca_file(
        &config.signal_url,
        &mailbox,
        config.performance.signal_backoff,
        signaling_requests.clone(),
        config.signal_ca_file.as_deref(),
    )?;
    // A client and a server's session for it talk in the client's own mailbox; the
    // room's is where clients knock and the server announces itself.
    let (signal, lobby) = match &client {
        Some(id) => {
            let own = room_signal.for_room(&key.client_mailbox(id));
            let lobby = (role == Role::Client).then_some(room_signal);
            (own, lobby)
        }
        None => (room_signal, None),
    };
    let hub = is_hub.then(Hub::new);
    let totals = Arc::new(Counters::default());
    let (conn_tx, conn_rx) = watch::channel(None);
    let ctx = Ctx::new(
        conn_rx,
        config.performance.clone(),
        totals.clone(),
        config.allow.clone(),
    );
    let (incoming_tx, incoming_rx) = mpsc::channel(4);
    let shared = Arc::new(Shared {
        role,
        password,
        key,
        our_ids: Mutex::new((Offer::new_id(), String::new())),
        offer_guard: Mutex::new(OfferGuard::new()),
        rejections: Mutex::new(RejectionReports::default()),
        rejected: Mutex::new(None),
        new_peer: tokio::sync::Notify::new(),
        new_peer_id: Mutex::new(None),
        check_sources: Mutex::new(HashMap::new()),
        identity,
        pinned,
        state: StateCell {
            state: Mutex::new(State::Starting),
            cv: Condvar::new(),
        },
        events_tx: Mutex::new(None),
        subscribers: Arc::new(Mutex::new(Vec::new())),
        totals,
        ctx,
        conn_tx,
        mappings: Mutex::new(BTreeMap::new()),
        next_mapping: AtomicU64::new(1),
        root,
        endpoint: endpoint.clone(),
        agent,
        local_addr,
        host_candidates,
        discovery: Mutex::new(None),
        nat_detail: Mutex::new(None),
        detecting: Default::default(),
        failed_punches: Default::default(),
        signal,
        stun_discoveries: AtomicU64::new(0),
        signaling_requests,
        reconnects: AtomicU64::new(0),
        path_changes: AtomicU64::new(0),
        offers_rejected: AtomicU64::new(0),
        checks_unauthenticated: AtomicU64::new(0),
        timings: Mutex::new(Timings::default()),
        peer: Mutex::new(PeerInfo::default()),
        last_error: Mutex::new(None),
        failure: Mutex::new(None),
        prflx: Mutex::new(None),
        birthday_counters: Arc::default(),
        birthday_failed: Mutex::new(std::collections::HashSet::new()),
        side_technique: Mutex::new(None),
        turn,
        portmap,
        auth_failed: AtomicBool::new(false),
        metrics_addr,
        span,
        client,
        lobby,
        hub_changed,
        hub,
        config,
    });
    if let Some(listener) = metrics_listener {
        let (s, token) = (shared.clone(), shared.root.clone());
        crate::spawn(async move {
            let stats = move || snapshot(&s);
            if let Err(e) = crate::metrics::serve(listener, stats, token).await {
                tracing::warn!(error = %e, "metrics server stopped");
            }
        });
    }
    crate::spawn(stun_dispatch(shared.clone(), stun_rx));
    // The server engine itself only reads the room; its sessions accept the tunnels.
    if role == Role::Server && shared.hub.is_none() {
        crate::spawn(accept_loop(
            shared.clone(),
            endpoint,
            incoming_tx,
            shared.root.clone(),
        ));
    }
    Ok((shared, incoming_rx))
}

/// Binds the engine's one UDP socket. The IPv6 unspecified address (the default,
/// `[::]`) gives a dual-stack socket (`IPV6_V6ONLY` off) that reaches IPv4 and IPv6
/// peers alike; where that fails for any reason but a port in use (IPv6 not in the
/// kernel: `EAFNOSUPPORT`; disabled: `EADDRNOTAVAIL`), it falls back to `0.0.0.0` on
/// the same port. Any other address binds exactly that.
pub(crate) fn bind_tunnel_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket> {
    match crate::socket::bind_udp(addr, Some(buffer.max(2 << 20))) {
        Err(e)
            if addr.ip().is_unspecified()
                && addr.is_ipv6()
                && e.kind() != std::io::ErrorKind::AddrInUse =>
        {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(error = %e, "no IPv6 on this host: the tunnel socket is IPv4 only");
            crate::socket::bind_udp(v4, Some(buffer.max(2 << 20)))
                .map_err(|e| Error::bind("tunnel socket (bind)", v4, &e))
        }
        r => r.map_err(|e| Error::bind("tunnel socket (bind)", addr, &e)),
    }
}

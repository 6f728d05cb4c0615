"""stunfwd: reach a TCP or UDP service behind a NAT from a peer behind another NAT.

Two peers meet in a *room* on a rendezvous server, learn their public addresses with
STUN, punch through both NATs and carry port mappings through an encrypted, mutually
authenticated QUIC tunnel. This package runs the same Rust engine as the ``stunfwd``
command line::

    import stunfwd

    with stunfwd.Engine({
        "mode": "client",
        "room": "my-home-box",
        "secret": "a long random string both sides share",
        "signalUrl": "http://rendezvous.example.org:8080/",
        "stunServers": ["rendezvous.example.org:3478"],
        "mappings": ["tcp:2222:22"],
    }) as engine:
        engine.wait_connected(timeout=30)
        ...  # ssh -p 2222 localhost

Logs go to the ``stunfwd`` logger of :mod:`logging`.
"""

from __future__ import annotations

import logging

from ._engine import ConfigSource, Engine, EventCallback
from ._errors import (
    AddressInUseError,
    ConfigError,
    IoError,
    NoPathError,
    NoSuchMappingError,
    PeerAuthError,
    RelayError,
    SignalingError,
    StoppedError,
    StunError,
    StunfwdError,
    TimeoutError,
    TunnelError,
)
from ._signal import SignalServer
from ._stunfwd import __version__
from ._types import (
    Address,
    ClientStateChanged,
    EngineWarning,
    Event,
    MappingAdded,
    MappingInfo,
    MappingRemoved,
    PathKind,
    PeerRejected,
    State,
    StateChanged,
    StateInfo,
)

__all__ = [
    "__version__",
    "Engine",
    "SignalServer",
    "ConfigSource",
    "EventCallback",
    "Address",
    "State",
    "PathKind",
    "StateInfo",
    "MappingInfo",
    "Event",
    "StateChanged",
    "MappingAdded",
    "MappingRemoved",
    "PeerRejected",
    "EngineWarning",
    "ClientStateChanged",
    "StunfwdError",
    "ConfigError",
    "AddressInUseError",
    "IoError",
    "SignalingError",
    "StunError",
    "PeerAuthError",
    "TimeoutError",
    "NoSuchMappingError",
    "StoppedError",
    "TunnelError",
    "NoPathError",
    "RelayError",
]

# A library leaves output to the application: without a handler configured, records
# of WARNING and above would otherwise reach stderr through logging.lastResort.
logging.getLogger("stunfwd").addHandler(logging.NullHandler())

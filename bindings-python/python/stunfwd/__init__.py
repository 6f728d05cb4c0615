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

from . import _engine, _types
from ._engine import Engine
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
from ._stunfwd import __version__ as _native_version
from ._types import (
    ClientStateChanged,
    EngineWarning,
    MappingAdded,
    MappingInfo,
    MappingRemoved,
    PathKind,
    PeerRejected,
    State,
    StateChanged,
    StateInfo,
)

__version__: str = _native_version
"""The version of this package: the version of the stunfwd workspace it was built
from, the same as the C library's and the command line's."""

# The type aliases are bound here again so that their docstrings are on the names the
# package exports (a docstring documents an assignment; pdoc reads this module's).
ConfigSource = _engine.ConfigSource
"""A config for :class:`Engine`: a dict of config keys (the project README lists
them), a JSON document (a string that starts with ``{``), or the path of a JSON or YAML
file (``.yaml``/``.yml``)."""

EventCallback = _engine.EventCallback
"""A function that receives each :data:`Event`, on the engine's event thread; what it
returns is ignored, and an exception it raises is logged."""

Address = _types.Address
"""A socket address as ``(host, port)``, the form :mod:`socket` takes. IPv6 hosts come
without brackets."""

Event = _types.Event
"""What :meth:`Engine.on_event` callbacks receive: a :class:`StateChanged`,
:class:`MappingAdded`, :class:`MappingRemoved`, :class:`PeerRejected`,
:class:`EngineWarning` or :class:`ClientStateChanged`. Match on the class; a kind of
event this version does not know is not delivered."""

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

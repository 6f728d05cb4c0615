"""Plain data: engine states, tunnel paths, mappings and events."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

__all__ = [
    "Address",
    "State",
    "PathKind",
    "StateInfo",
    "MappingInfo",
    "StateChanged",
    "MappingAdded",
    "MappingRemoved",
    "PeerRejected",
    "EngineWarning",
    "Event",
]

# Documented where the package exports it (__init__.py), like `Event`.
Address = Tuple[str, int]


class State(enum.Enum):
    """Where an engine is in its life. The value is the core's lowercase name."""

    STARTING = "starting"
    """Just started."""
    DISCOVERING = "discovering"
    """Asking the STUN servers for the public address."""
    SIGNALING = "signaling"
    """Posting our offer on the rendezvous server and waiting for the peer's."""
    PUNCHING = "punching"
    """Running connectivity checks and the QUIC handshake."""
    CONNECTED = "connected"
    """The tunnel is up."""
    RECONNECTING = "reconnecting"
    """Not connected; retrying after a failure or after the tunnel was lost."""
    STOPPED = "stopped"
    """Stopped by :meth:`Engine.stop`."""
    FAILED = "failed"
    """Gave up for good."""

    @property
    def is_connected(self) -> bool:
        """True when the tunnel is up."""
        return self is State.CONNECTED

    @property
    def is_final(self) -> bool:
        """True when the engine will not connect any more."""
        return self in (State.STOPPED, State.FAILED)


class PathKind(enum.Enum):
    """How a connected tunnel reaches the peer."""

    DIRECT = "direct"
    """Through both NATs, to the peer's public address."""
    LAN = "lan"
    """To one of the peer's own interface addresses (same LAN or same host)."""
    RELAY = "relay"
    """Through a TURN relay."""


def _address(text: str) -> Address:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` as ``(host, port)``."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class StateInfo:
    """A state with its details.

    ``path``, ``peer`` and ``technique`` are set when connected; ``attempt`` and
    ``reason`` when reconnecting; ``reason`` when failed. ``str()`` gives the core's
    one-line description, e.g. ``connected (lan to 127.0.0.1:40000, found by checks)``.
    """

    state: State
    """The state."""
    path: Optional[PathKind] = None
    """Connected: the path the tunnel takes."""
    peer: Optional[Address] = None
    """Connected: the peer's address on that path."""
    technique: Optional[str] = None
    """Connected: how the path was found, ``"checks"``, ``"birthday"``,
    ``"prediction"`` or ``"relay"``."""
    attempt: Optional[int] = None
    """Reconnecting: consecutive failed attempts (0 right after a tunnel was lost)."""
    reason: Optional[str] = None
    """Reconnecting or failed: what failed last."""
    description: str = field(default="", repr=False, compare=False)
    """The core's one-line description, what ``str()`` returns."""

    @property
    def is_connected(self) -> bool:
        """True when the tunnel is up."""
        return self.state is State.CONNECTED

    def __str__(self) -> str:
        return self.description or self.state.value

    @classmethod
    def _from_dict(cls, d: Dict[str, Any], description: str = "") -> StateInfo:
        path = d.get("path")
        peer = d.get("peer")
        return cls(
            state=State(d["state"]),
            path=PathKind(path) if path else None,
            peer=_address(peer) if peer else None,
            technique=d.get("technique"),
            attempt=d.get("attempt"),
            reason=d.get("reason"),
            description=description,
        )

    @classmethod
    def _from_native(cls, pair: Tuple[str, str]) -> StateInfo:
        document, description = pair
        parsed: Dict[str, Any] = json.loads(document)
        return cls._from_dict(parsed, description)


@dataclass(frozen=True)
class MappingInfo:
    """A mapping as registered in an engine."""

    id: int
    """Its id, as returned by :meth:`Engine.add_mapping`."""
    spec: str
    """Canonical spec, e.g. ``tcp:127.0.0.1:8080:127.0.0.1:22``."""
    proto: str
    """``"tcp"`` or ``"udp"``."""
    listen: Address
    """The local address actually listened on (a port 0 in the spec is resolved)."""
    target: str
    """What the server side dials, ``host:port``."""


@dataclass(frozen=True)
class StateChanged:
    """The engine's state changed."""

    info: StateInfo
    """The new state with its details."""

    @property
    def state(self) -> State:
        """The new state."""
        return self.info.state


@dataclass(frozen=True)
class MappingAdded:
    """A mapping started listening."""

    id: int
    """Its id, as returned by :meth:`Engine.add_mapping`."""
    spec: str
    """Canonical spec, e.g. ``tcp:127.0.0.1:8080:127.0.0.1:22``."""
    listen: Address
    """The local address it listens on (a port 0 in the spec is resolved)."""


@dataclass(frozen=True)
class MappingRemoved:
    """A mapping was removed; its listener and connections are closed."""

    id: int
    """Its id."""


@dataclass(frozen=True)
class PeerRejected:
    """A peer's offer was rejected (wrong secret, tampering, malformed)."""

    reason: str
    """Why, as the core words it."""


@dataclass(frozen=True)
class EngineWarning:
    """Something to know that is not a failure: an engine without a ``secret`` says so
    once, at start."""

    message: str
    """The warning, for a human."""


@dataclass(frozen=True)
class ClientStateChanged:
    """Server side: one client's tunnel changed state."""

    client: str
    """The client's id: 32 hex characters it chose at start (its ``stats()["client_id"]``)."""
    info: StateInfo
    """The client's new state with its details."""

    @property
    def state(self) -> State:
        """The client's new state."""
        return self.info.state


Event = Union[
    StateChanged, MappingAdded, MappingRemoved, PeerRejected, EngineWarning, ClientStateChanged
]


def _event_from_native(document: str, description: str) -> Optional[Event]:
    """An event from the core's JSON form (``description`` describes the state of a
    state event); ``None`` for kinds this version does not know."""
    d: Dict[str, Any] = json.loads(document)
    kind = d.get("event")
    if kind == "state":
        return StateChanged(StateInfo._from_dict(d["state"], description))
    if kind == "mapping_added":
        return MappingAdded(id=d["id"], spec=d["spec"], listen=_address(d["listen"]))
    if kind == "mapping_removed":
        return MappingRemoved(id=d["id"])
    if kind == "peer_rejected":
        return PeerRejected(reason=d["reason"])
    if kind == "warning":
        return EngineWarning(message=d["message"])
    if kind == "client_state":
        return ClientStateChanged(
            client=d["client"], info=StateInfo._from_dict(d["state"], description)
        )
    return None


"""The exceptions of stunfwd: one class per kind of core error.

Every exception the engine raises is a :class:`StunfwdError`; its ``code`` is the
core's stable error code (``ERR_CONFIG``, ``ERR_TIMEOUT``...). Where a builtin exception
means the same thing, the class derives from it too, so ``except ValueError`` catches a
:class:`ConfigError` and ``except TimeoutError`` catches a :class:`TimeoutError`.
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, Type

__all__ = [
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


class StunfwdError(Exception):
    """Base class of every stunfwd error.

    The message says what was wrong and what would be valid. ``code`` is the core's
    stable code for the kind of error, the same string the C and Node APIs use.
    """

    code: str = "ERR_STUNFWD"
    """The core's stable code for this kind of error (``ERR_CONFIG``, ``ERR_TIMEOUT``...);
    a code this version does not know comes as a plain :class:`StunfwdError`."""


class ConfigError(StunfwdError, ValueError):
    """A configuration value (or a mapping spec, or an address) is invalid. Also a
    :class:`ValueError`."""

    code = "ERR_CONFIG"
    key: str = ""
    """The key, in JSON-path style: ``signalUrl``, ``mappings[1]``,
    ``performance.stunCache``; ``(document)`` when the document itself is not valid
    JSON; ``mapping`` for a spec given to :meth:`Engine.add_mapping`."""
    value: str = ""
    """The offending value, as given."""
    problem: str = ""
    """What is wrong with it."""
    expected: str = ""
    """What would be valid."""


class AddressInUseError(StunfwdError, OSError):
    """A local address (a mapping's listener, the tunnel socket, a server port) is
    already taken. Also an :class:`OSError`."""

    code = "ERR_ADDR_IN_USE"
    what: str = ""
    """What was being bound, e.g. a mapping's listener."""
    address: str = ""
    """The address, ``"IP:PORT"``."""
    port: int = 0
    """Its port."""


class IoError(StunfwdError, OSError):
    """Any other I/O failure (a config file that cannot be read, a socket error), with
    what was being done. Also an :class:`OSError`."""

    code = "ERR_IO"


class SignalingError(StunfwdError):
    """The rendezvous (signaling) server failed or answered nonsense."""

    code = "ERR_SIGNAL"


class StunError(StunfwdError):
    """STUN failed: no server answered, or an answer was malformed."""

    code = "ERR_STUN"


class PeerAuthError(StunfwdError):
    """The peer could not be authenticated (its offer's MAC did not verify: most often
    the two sides do not share the same ``secret``)."""

    code = "ERR_PEER_AUTH"


class TimeoutError(StunfwdError, builtins.TimeoutError):
    """A wait ran out of time; the message gives the engine's state and its last
    error. Also a builtin :class:`TimeoutError`."""

    code = "ERR_TIMEOUT"


class NoSuchMappingError(StunfwdError, LookupError):
    """No mapping has this id. Also a :class:`LookupError`."""

    code = "ERR_NO_SUCH_MAPPING"
    mapping_id: int = 0
    """The id asked for."""


class StoppedError(StunfwdError):
    """The engine is stopped (or stopping) and cannot do this any more."""

    code = "ERR_STOPPED"


class TunnelError(StunfwdError):
    """The QUIC tunnel failed, or the engine gave up for good."""

    code = "ERR_TUNNEL"


class NoPathError(StunfwdError):
    """No direct path can be punched between the two NAT types and no TURN relay is
    configured: configure ``relay``."""

    code = "ERR_NO_PATH"
    local_nat: str = ""
    """Our NAT's type."""
    peer_nat: str = ""
    """The peer's NAT's type."""


class RelayError(StunfwdError):
    """The TURN relay failed (allocation refused, credentials rejected, unreachable)."""

    code = "ERR_RELAY"


_BY_CODE: Dict[str, Type[StunfwdError]] = {
    cls.code: cls
    for cls in (
        ConfigError,
        AddressInUseError,
        IoError,
        SignalingError,
        StunError,
        PeerAuthError,
        TimeoutError,
        NoSuchMappingError,
        StoppedError,
        TunnelError,
        NoPathError,
        RelayError,
    )
}


def _from_native(code: str, message: str, details: Dict[str, Any]) -> StunfwdError:
    """Builds the exception for a core error (called by the native module). A code
    this version does not know still gives a :class:`StunfwdError` with that ``code``."""
    exc = _BY_CODE.get(code, StunfwdError)(message)
    exc.code = code
    for name, value in details.items():
        setattr(exc, name, value)
    return exc


def _config_error(key: str, value: str, problem: str, expected: str) -> ConfigError:
    """A :class:`ConfigError` worded like the core's."""
    exc = ConfigError(f"invalid config `{key}`: {value}: {problem}; valid: {expected}")
    exc.key, exc.value, exc.problem, exc.expected = key, value, problem, expected
    return exc

"""The :class:`Engine`: one peer of a stunfwd tunnel."""

from __future__ import annotations

import asyncio
import collections.abc
import json
import logging
import math
import os
import warnings
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar, Union

from . import _lifecycle
from ._errors import NoSuchMappingError, _config_error, _from_native
from ._stunfwd import Engine as _NativeEngine
from ._stunfwd import WaitCancel as _WaitCancel
from ._types import Address, Event, MappingInfo, State, StateInfo, _address, _event_from_native

__all__ = ["Engine", "ConfigSource", "EventCallback"]

_log = logging.getLogger("stunfwd")

# Documented where the package exports them (__init__.py).
ConfigSource = Union[Mapping[str, Any], str, "os.PathLike[str]"]
EventCallback = Callable[[Event], object]

_C = TypeVar("_C", bound=EventCallback)


class _Dispatcher:
    """Receives the engine's events on its event thread and calls the callbacks.

    Kept apart from the :class:`Engine` so that the native engine, which holds it, does
    not keep the Python object alive.
    """

    __slots__ = ("callbacks", "__weakref__")

    def __init__(self) -> None:
        self.callbacks: List[EventCallback] = []

    def __call__(self, document: str, description: str) -> None:
        event = _event_from_native(document, description)
        # The garbage collector may have cleared this object (and be about to clear the
        # engine) when an engine that was never stopped is collected.
        callbacks = getattr(self, "callbacks", None)
        if event is None or callbacks is None:
            return
        for callback in list(callbacks):
            try:
                callback(event)
            except Exception:
                _log.exception(
                    "event callback %r raised on %r; it stays subscribed", callback, event
                )


def _check_json(value: object, key: str) -> None:
    """Raises :class:`ConfigError` naming the key of the first value JSON cannot hold."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _config_error(key or "(document)", repr(value), "not a finite number",
                                "a finite number")
        return
    if isinstance(value, collections.abc.Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _config_error(key or "(document)", repr(k), "a key that is not a string",
                                    "string keys")
            _check_json(v, f"{key}.{k}" if key else k)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{key}[{i}]")
        return
    raise _config_error(
        key or "(document)",
        repr(value),
        f"a {type(value).__name__} cannot be written as JSON",
        "strings, numbers, booleans, None, lists and dicts",
    )


def _start(config: ConfigSource, dispatch: _Dispatcher) -> _NativeEngine:
    if isinstance(config, collections.abc.Mapping):
        _check_json(config, "")
        return _NativeEngine.from_json(json.dumps(dict(config)), dispatch)
    if isinstance(config, str) and config.lstrip().startswith("{"):
        return _NativeEngine.from_json(config, dispatch)
    if isinstance(config, (str, os.PathLike)):
        return _NativeEngine.from_path(os.fspath(config), dispatch)
    raise TypeError(
        f"config must be a dict, a JSON string or a path, not {type(config).__name__}"
    )


class Engine:
    """One peer of a stunfwd tunnel, running in the background.

    ``config`` is a dict of config keys (see the project README), a JSON document, or
    the path of a JSON or YAML file (a string that starts with ``{`` is a document).
    Creating the engine validates the config and binds the tunnel socket and every
    mapping's listener, so a bad config raises :class:`ConfigError` and a taken port
    :class:`AddressInUseError` here, with nothing left running. Connecting then goes on
    in the background: use :meth:`wait_connected`, :attr:`state` or events.

    ``on_event`` is subscribed before the engine starts, so it sees every event from the
    first state change on (see :meth:`on_event`).

    Stop the engine with :meth:`stop`, or use it as a context manager (``with`` or
    ``async with``). Every method is thread-safe and every call that waits releases the
    GIL. An engine left running at interpreter exit is stopped then.
    """

    def __init__(
        self, config: ConfigSource, *, on_event: Optional[EventCallback] = None
    ) -> None:
        self._dispatch = _Dispatcher()
        if on_event is not None:
            self._dispatch.callbacks.append(on_event)
        self._native = _start(config, self._dispatch)
        _lifecycle.track(self)

    # -- mappings -----------------------------------------------------------------

    def add_mapping(self, spec: str) -> int:
        """Adds a port mapping and returns its id (client mode only).

        ``spec`` is ``tcp:LOCAL:REMOTE``, ``tcp:LOCAL:HOST:REMOTE`` or
        ``tcp:BIND:LOCAL:HOST:REMOTE`` (``udp:`` likewise); ``LOCAL`` may be 0 for any
        free port (see :meth:`mapping_addr`). The listener is bound before this returns:
        a bad spec raises :class:`ConfigError` (key ``mapping``), a taken port
        :class:`AddressInUseError`. Works before and after the tunnel is up.
        """
        return self._native.add_mapping(spec)

    def remove_mapping(self, mapping_id: int) -> None:
        """Removes a mapping: closes its listener and its connections, and returns once
        its port is free. Raises :class:`NoSuchMappingError` for an unknown id."""
        self._native.remove_mapping(mapping_id)

    def mappings(self) -> List[MappingInfo]:
        """The mappings, in id order."""
        return [
            MappingInfo(id=i, spec=spec, proto=proto, listen=_address(listen), target=target)
            for i, spec, proto, listen, target in self._native.mappings()
        ]

    def mapping_addr(self, mapping_id: int) -> Address:
        """The local ``(host, port)`` a mapping listens on (its real port when the spec
        said 0). Raises :class:`NoSuchMappingError` for an unknown id."""
        for m in self.mappings():
            if m.id == mapping_id:
                return m.listen
        raise _from_native(
            NoSuchMappingError.code, f"no such mapping: {mapping_id}", {"mapping_id": mapping_id}
        )

    # -- state --------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (see :attr:`state_info` for its details)."""
        return self.state_info.state

    @property
    def state_info(self) -> StateInfo:
        """The current state with its details: the path and the peer when connected,
        the attempt and the reason when reconnecting or failed."""
        return StateInfo._from_native(self._native.state())

    @property
    def local_addr(self) -> Address:
        """The tunnel's UDP socket, ``(host, port)``. On a server, the engine's own socket
        (bound at start, so a ``bind`` port in use is reported then); each client's tunnel
        has a socket of its own, listed in ``stats()["clients"]``."""
        return _address(self._native.local_addr())

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has returned."""
        return self._native.stopped

    def stats(self) -> Dict[str, Any]:
        """A snapshot of the engine's figures, as a dict.

        Keys: ``mode``, ``room``, ``insecure`` (no ``secret`` set), ``state`` (``{"state": "connected", "path": ...,
        "peer": ..., "technique": ...}``), ``path``, ``peer_addr``, ``technique`` (how the
        path was found: ``checks``, ``birthday``, ``prediction`` or ``relay``), ``local_addr``, ``public_addr``,
        ``nat_type``, ``peer_nat_type``, ``rtt_ms``, ``totals`` and, per mapping,
        ``mappings[i]["traffic"]`` (``connections_opened``, ``connections_active``,
        ``connections_failed``, ``bytes_sent``, ``bytes_received``, ``datagrams_sent``,
        ``datagrams_received``, ``refused_by_policy``, ``tunnel_wait_timeouts``,
        ``flows_refused``),
        ``timings`` (``*_ms``),
        ``reconnects``, ``birthday_sockets``, ``birthday_packets``,
        ``stun_discoveries``, ``signaling_requests``,
        ``offers_rejected``, ``checks_unauthenticated``, ``last_error``,
        ``port_mapping`` (``protocol``, ``gateway``, ``external``, ``reason``),
        ``client_id`` (client side: this client's id in the room) and ``clients``
        (server side: one dict per client served, with ``id``, ``state``, ``path``,
        ``peer_addr``, ``technique``, ``peer_nat_type``, ``rtt_ms``, ``local_addr``,
        ``totals``, ``reconnects`` and ``last_error``; the top-level figures then
        describe the client connected last, and ``totals`` sums them all). Addresses
        are ``"IP:PORT"`` strings; absent values are ``None``.
        """
        stats: Dict[str, Any] = json.loads(self._native.stats_json())
        return stats

    def wait_connected(self, timeout: float) -> StateInfo:
        """Blocks until the tunnel is up and returns the connected state.

        ``timeout`` is in seconds (``math.inf`` for no limit). Raises
        :class:`TimeoutError` when it passes (the message gives the state and the last
        error), :class:`PeerAuthError` when the peer's offers did not authenticate (the
        two sides do not share the secret), :class:`StoppedError` if the engine is
        stopped meanwhile and :class:`TunnelError` if it failed for good. Releases the
        GIL while it waits; Ctrl-C interrupts it with :class:`KeyboardInterrupt`.
        """
        pair = self._native.wait_connected(timeout)
        if pair is None:  # only a wait given a cancel flag returns None
            raise RuntimeError("wait_connected was cancelled")
        return StateInfo._from_native(pair)

    async def wait_connected_async(self, timeout: float) -> StateInfo:
        """:meth:`wait_connected` for asyncio: the wait runs on the loop's default
        executor, so the event loop is never blocked. Cancelling the task ends the wait
        at once."""
        loop = asyncio.get_running_loop()
        cancel = _WaitCancel()
        try:
            pair = await loop.run_in_executor(None, self._native.wait_connected, timeout, cancel)
        except asyncio.CancelledError:
            cancel.cancel()
            raise
        if pair is None:
            raise asyncio.CancelledError()
        return StateInfo._from_native(pair)

    # -- events -------------------------------------------------------------------

    def on_event(self, callback: _C) -> _C:
        """Calls ``callback(event)`` for every event from now on and returns
        ``callback`` (so it also works as a decorator).

        Events are :class:`StateChanged`, :class:`MappingAdded`,
        :class:`MappingRemoved`, :class:`PeerRejected`, :class:`EngineWarning` (an
        engine without a ``secret`` says so at start) and, on a server,
        :class:`ClientStateChanged`. Callbacks run one at a time
        on the engine's event thread, in the order the events happened, and may call
        any method of the engine, including :meth:`stop`. An exception raised by a
        callback is logged on the ``stunfwd`` logger with its traceback; the callback
        stays subscribed and the engine is not affected.
        """
        self._dispatch.callbacks.append(callback)
        return callback

    # -- stopping -----------------------------------------------------------------

    def stop(self, timeout: float = 2.0) -> None:
        """Stops within about ``timeout`` seconds: closes the listeners and the
        connections, tells the peer, leaves the room and ends every thread of the
        engine. Idempotent, callable from any thread, including inside an event
        callback. Releases the GIL while it waits."""
        self._native.stop(timeout)

    async def stop_async(self, timeout: float = 2.0) -> None:
        """:meth:`stop` for asyncio, on the loop's default executor."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._native.stop, timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.stop_async()

    def __repr__(self) -> str:
        native = getattr(self, "_native", None)
        if native is None:
            return "<stunfwd.Engine (not started)>"
        host, port = _address(native.local_addr())
        return f"<stunfwd.Engine {StateInfo._from_native(native.state())} on {host}:{port}>"

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None and not native.stopped:
            warnings.warn(
                "a stunfwd.Engine was never stopped; stopping it in the background "
                "(use `with stunfwd.Engine(...)` or call stop())",
                ResourceWarning,
                source=self,
            )

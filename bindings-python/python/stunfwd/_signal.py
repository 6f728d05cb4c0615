"""The rendezvous server, :class:`SignalServer`."""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Optional, Type

from . import _lifecycle
from ._stunfwd import SignalServer as _NativeSignalServer

__all__ = ["SignalServer"]


class SignalServer:
    """A rendezvous server: the HTTP mailbox both peers meet in and, unless ``stun`` is
    ``None``, a STUN responder on UDP, in this process.

    ``http`` and ``stun`` are ``"IP:PORT"`` addresses; port 0 picks a free port, and
    :attr:`url` and :attr:`stun_addr` tell the real ones. A bad address raises
    :class:`ConfigError` (key ``http`` or ``stun``), a taken one
    :class:`AddressInUseError`. The server runs on a thread of its own until
    :meth:`stop`, the end of a ``with`` block, or interpreter exit.
    """

    def __init__(
        self, http: str = "127.0.0.1:0", stun: Optional[str] = "127.0.0.1:0"
    ) -> None:
        self._native = _NativeSignalServer(http, stun)
        _lifecycle.track(self)

    @property
    def url(self) -> str:
        """The URL peers use as ``signalUrl``, e.g. ``http://127.0.0.1:41234/``."""
        return self._native.url

    @property
    def http_addr(self) -> str:
        """The bound HTTP address, ``"IP:PORT"``."""
        return self._native.http_addr

    @property
    def stun_addr(self) -> Optional[str]:
        """The STUN responder's address as ``"IP:PORT"`` (the form ``stunServers``
        takes), or ``None`` when it runs none."""
        return self._native.stun_addr

    @property
    def requests(self) -> int:
        """HTTP requests served so far (0 once stopped)."""
        return self._native.requests

    @property
    def stopped(self) -> bool:
        """True once stopped."""
        return self._native.stopped

    def stop(self, timeout: float = 1.0) -> None:
        """Stops within about ``timeout`` seconds: pending long-polls are answered at
        once and the sockets closed. Idempotent; releases the GIL while it waits."""
        self._native.stop(timeout)

    def __enter__(self) -> SignalServer:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        native = getattr(self, "_native", None)
        if native is None:
            return "<stunfwd.SignalServer (not started)>"
        state = "stopped" if native.stopped else "running"
        return f"<stunfwd.SignalServer {state} at {native.url} stun={native.stun_addr}>"

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None and not native.stopped:
            warnings.warn(
                "a stunfwd.SignalServer was never stopped; stopping it in the background "
                "(use `with stunfwd.SignalServer(...)` or call stop())",
                ResourceWarning,
                source=self,
            )

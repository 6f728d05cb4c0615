"""Stops what is still running when the interpreter exits.

Engines and servers run threads of their own that call into Python (events, logs).
They are stopped at exit, while the interpreter is still whole, and the logging thread
delivers what it still holds before it ends.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Protocol

from . import _stunfwd

_log = logging.getLogger("stunfwd")


class _Stoppable(Protocol):
    @property
    def stopped(self) -> bool: ...

    def stop(self, timeout: float = ...) -> None: ...


_running: "weakref.WeakSet[_Stoppable]" = weakref.WeakSet()


def track(obj: _Stoppable) -> None:
    """Stops ``obj`` at exit if it is still running then."""
    _running.add(obj)


@atexit.register
def _shutdown() -> None:
    for obj in list(_running):
        if not obj.stopped:
            try:
                obj.stop(1.0)
            except Exception:
                _log.exception("stopping %r at exit failed", obj)
    _stunfwd.shutdown_logging()

"""Events reach callbacks; failing callbacks are logged; logs reach `logging`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List

import pytest
from conftest import Rendezvous, forge_offer, room

import stunfwd


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_events_arrive_in_order(rendezvous: Rendezvous, tcp_echo: int) -> None:
    name = room()
    events: List[stunfwd.Event] = []
    with stunfwd.Engine(rendezvous.config("server", name)) as server:
        client = stunfwd.Engine(
            rendezvous.config("client", name, mappings=(f"tcp:0:{tcp_echo}",)),
            on_event=events.append,
        )
        with client:
            client.wait_connected(20)
            second = client.add_mapping(f"udp:0:{tcp_echo}")
            client.remove_mapping(second)
            assert server.wait_connected(20).is_connected
    states = [e.state for e in events if isinstance(e, stunfwd.StateChanged)]
    assert states[:3] == [stunfwd.State.DISCOVERING, stunfwd.State.SIGNALING, stunfwd.State.PUNCHING]
    assert stunfwd.State.CONNECTED in states
    assert states[-1] is stunfwd.State.STOPPED
    connected = next(e for e in events if isinstance(e, stunfwd.StateChanged) and e.state.is_connected)
    assert isinstance(connected, stunfwd.StateChanged)
    assert connected.info.path is stunfwd.PathKind.LAN
    added = [e for e in events if isinstance(e, stunfwd.MappingAdded)]
    assert [a.id for a in added] == [1, second]
    assert stunfwd.MappingRemoved(id=second) in events


def test_a_server_names_each_client(rendezvous: Rendezvous) -> None:
    name = room()
    events: List[stunfwd.Event] = []
    with stunfwd.Engine(rendezvous.config("server", name), on_event=events.append) as server:
        with stunfwd.Engine(rendezvous.config("client", name)) as one, stunfwd.Engine(
            rendezvous.config("client", name)
        ) as two:
            one.wait_connected(20)
            two.wait_connected(20)
            ids = sorted(c.stats()["client_id"] for c in (one, two))
            assert all(len(i) == 32 for i in ids)
            assert _eventually(
                lambda: sum(c["state"]["state"] == "connected" for c in server.stats()["clients"]) == 2,
                10,
            ), server.stats()["clients"]
            assert sorted(c["id"] for c in server.stats()["clients"]) == ids
            assert server.stats()["client_id"] is None
    named = {e.client for e in events if isinstance(e, stunfwd.ClientStateChanged) and e.state.is_connected}
    assert sorted(named) == ids
    for e in events:
        if isinstance(e, stunfwd.ClientStateChanged):
            assert e.info.description, e


def test_a_raising_callback_is_logged_and_harmless(
    rendezvous: Rendezvous, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stunfwd")
    seen: List[stunfwd.Event] = []

    def broken(event: stunfwd.Event) -> None:
        raise RuntimeError("callback bug")

    name = room()
    with stunfwd.Engine(rendezvous.config("server", name)) as server:
        with stunfwd.Engine(rendezvous.config("client", name), on_event=broken) as client:
            client.on_event(seen.append)
            assert client.wait_connected(20).is_connected
    assert any(isinstance(e, stunfwd.StateChanged) and e.state.is_connected for e in seen)
    failures = [r for r in caplog.records if "event callback" in r.getMessage()]
    assert failures, "the callback's exception was not logged"
    record = failures[0]
    assert record.name == "stunfwd"
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_a_callback_may_stop_the_engine(rendezvous: Rendezvous) -> None:
    name = room()
    stopped = threading.Event()
    with stunfwd.Engine(rendezvous.config("server", name)):
        engines: List[stunfwd.Engine] = []

        def on_event(event: stunfwd.Event) -> None:
            if isinstance(event, stunfwd.StateChanged):
                if event.state.is_connected:
                    engines[0].stop()
                elif event.state is stunfwd.State.STOPPED:
                    stopped.set()

        engines.append(stunfwd.Engine(rendezvous.config("client", name), on_event=on_event))
        assert stopped.wait(20)
        assert engines[0].state is stunfwd.State.STOPPED
        engines[0].stop()


def test_forged_offer_is_an_event(rendezvous: Rendezvous) -> None:
    name = room()
    rejected = threading.Event()

    def on_event(event: stunfwd.Event) -> None:
        if isinstance(event, stunfwd.PeerRejected) and "MAC" in event.reason:
            rejected.set()

    with stunfwd.Engine(rendezvous.config("server", name, secret="a"), on_event=on_event):
        forge_offer(rendezvous.server.url, name, "a", "client")
        assert rejected.wait(10)


def test_logs_reach_the_stunfwd_logger(
    rendezvous: Rendezvous, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stunfwd")
    server, client = rendezvous.pair()
    client.stop()
    server.stop()

    def state_logs() -> List[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "stunfwd" and "state=connected" in r.getMessage()]

    assert _eventually(lambda: len(state_logs()) >= 2)
    record = state_logs()[0]
    assert record.levelno == logging.INFO
    assert getattr(record, "rust_target", "").startswith("stunfwd_core")
    assert record.pathname.endswith(".rs")
    assert (record.threadName or "").startswith("stunfwd-")


def test_levels_below_the_logger_level_are_not_forwarded(
    rendezvous: Rendezvous, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stunfwd")
    server, client = rendezvous.pair()
    client.stop()
    server.stop()
    time.sleep(0.3)
    assert not [r for r in caplog.records if r.name == "stunfwd" and r.levelno < logging.WARNING]


def test_a_level_change_takes_effect_while_running(
    rendezvous: Rendezvous, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stunfwd")
    server, client = rendezvous.pair()
    with server, client:
        caplog.set_level(logging.INFO, logger="stunfwd")
        time.sleep(1.5)  # the level is re-read every second while an engine runs
    assert _eventually(
        lambda: any("state=stopped" in r.getMessage() for r in caplog.records if r.name == "stunfwd")
    )

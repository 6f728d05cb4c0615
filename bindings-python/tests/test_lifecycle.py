"""Starting, stopping, cleaning up: ports, threads, other threads, the GIL, Ctrl-C."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import List

import pytest
from conftest import Rendezvous, room, thread_count, thread_names

import stunfwd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tcp_port_free(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_context_manager_frees_the_ports(rendezvous: Rendezvous) -> None:
    port = _free_port()
    with stunfwd.Engine(rendezvous.config("client", room(), mappings=(f"tcp:{port}:22",))) as engine:
        tunnel_port = engine.local_addr[1]
        assert engine.mapping_addr(1) == ("127.0.0.1", port)
        assert not _tcp_port_free(port)
        assert not _udp_port_free(tunnel_port)
    assert engine.stopped
    assert _tcp_port_free(port)
    assert _udp_port_free(tunnel_port)
    # The same port can be taken again at once.
    with stunfwd.Engine(rendezvous.config("client", room(), mappings=(f"tcp:{port}:22",))):
        pass


def test_context_manager_stops_on_exception(rendezvous: Rendezvous) -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with stunfwd.Engine(rendezvous.config("client", room())) as engine:
            raise RuntimeError("inside")
    assert engine.state is stunfwd.State.STOPPED


def test_stop_from_another_thread_ends_a_wait(rendezvous: Rendezvous) -> None:
    engine = stunfwd.Engine(rendezvous.config("client", room()))
    stopper = threading.Timer(0.5, engine.stop)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(stunfwd.StoppedError):
        engine.wait_connected(30)
    assert time.monotonic() - started < 5
    stopper.join()
    assert engine.stopped
    assert engine.state is stunfwd.State.STOPPED


def test_twenty_start_stop_cycles_leave_no_threads(rendezvous: Rendezvous, tcp_echo: int) -> None:
    mapping = f"tcp:0:{tcp_echo}"
    # A warm-up pair, so that lazily created process-wide threads exist before counting.
    server, client = rendezvous.pair(mapping)
    client.stop()
    server.stop()
    time.sleep(0.2)
    before = thread_count()
    names_before = thread_names()
    for i in range(20):
        name = room()
        server = stunfwd.Engine(rendezvous.config("server", name))
        client = stunfwd.Engine(rendezvous.config("client", name, mappings=(mapping,)))
        # Every fifth cycle goes all the way to connected; the others stop mid-way.
        if i % 5 == 0:
            client.wait_connected(20)
        client.stop()
        server.stop()
    deadline = time.monotonic() + 5
    while thread_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread_count() == before, f"threads before: {names_before}, after: {thread_names()}"


def test_an_engine_never_stopped_warns_and_is_stopped(rendezvous: Rendezvous) -> None:
    engine = stunfwd.Engine(rendezvous.config("client", room()))
    port = engine.local_addr[1]
    with pytest.warns(ResourceWarning, match="never stopped"):
        del engine
        gc.collect()
    deadline = time.monotonic() + 5
    while not _udp_port_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _udp_port_free(port)


def test_a_cycle_through_a_callback_is_collected(rendezvous: Rendezvous) -> None:
    engine = stunfwd.Engine(rendezvous.config("client", room()))
    # engine -> its callbacks -> this list -> engine, and the native engine holds the
    # callbacks too: only the garbage collector can free this, if it sees that edge.
    holder: List[object] = [engine]
    engine.on_event(lambda event, holder=holder: None)
    port = engine.local_addr[1]
    del engine, holder
    with pytest.warns(ResourceWarning):
        gc.collect()
    # The recorded warning held the engine (its `source`) until now: collect again.
    deadline = time.monotonic() + 5
    while not _udp_port_free(port) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert _udp_port_free(port)


def test_wait_connected_releases_the_gil(rendezvous: Rendezvous) -> None:
    ticks: List[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    with stunfwd.Engine(rendezvous.config("client", room())) as engine:
        thread = threading.Thread(target=ticker)
        thread.start()
        started = time.monotonic()
        with pytest.raises(stunfwd.TimeoutError):
            engine.wait_connected(1.0)
        ended = time.monotonic()
        done.set()
        thread.join()
    during = [t for t in ticks if started <= t <= ended]
    # Held while waiting, the GIL would leave the ticker one tick per 100 ms slice at
    # most (10); released, it ticks every millisecond or so.
    assert len(during) > 50, f"only {len(during)} ticks during a 1 s wait"


CTRL_C_CHILD = textwrap.dedent(
    """
    import sys, time
    import stunfwd

    with stunfwd.SignalServer() as rv:
        config = {"mode": "client", "room": "ctrl-c", "signalUrl": rv.url,
                  "stunServers": [rv.stun_addr], "bind": "127.0.0.1:0"}
        with stunfwd.Engine(config) as engine:
            print("waiting", flush=True)
            started = time.monotonic()
            try:
                engine.wait_connected(60)
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - started:.2f}s", flush=True)
                sys.exit(0)
    sys.exit(3)
    """
)


def test_ctrl_c_interrupts_wait_connected() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.startswith("interrupted after"), (out, err)
    assert time.monotonic() - sent < 10


def test_engine_left_running_is_stopped_at_exit() -> None:
    script = textwrap.dedent(
        """
        import logging, stunfwd
        logging.basicConfig(level=logging.INFO)
        rv = stunfwd.SignalServer()
        engine = stunfwd.Engine({"mode": "client", "room": "exit", "signalUrl": rv.url,
                                 "stunServers": [rv.stun_addr], "bind": "127.0.0.1:0"})
        engine.on_event(lambda event: print("event", event, flush=True))
        print("started", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "started" in done.stdout
    # Stopped at exit, while the interpreter was whole: the last event and log arrive.
    assert "State.STOPPED" in done.stdout
    assert "state=stopped" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts threads in /proc")
def test_signal_server_threads_end_on_stop() -> None:
    time.sleep(0.1)
    before = thread_count()
    for _ in range(5):
        with stunfwd.SignalServer() as server:
            assert server.url.startswith("http://127.0.0.1:")
    deadline = time.monotonic() + 5
    while thread_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread_count() == before

"""Shared fixtures: an in-process rendezvous server, engine configs on loopback, echo
services. Everything talks to 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import socket
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import stunfwd

_rooms = itertools.count()


def room() -> str:
    """A room name unique within this test run."""
    return f"py-{os.getpid()}-{next(_rooms)}"


def forge_offer(url: str, room_name: str, secret: str, role: str) -> None:
    """Posts an offer with a forged MAC into ``role``'s mailbox of ``room_name``, as a
    tampering rendezvous operator would (the mailbox name is derived from room and
    secret, docs/protocol.md section 4)."""
    key = hmac.new(secret.encode(), b"stunfwd/v1/" + room_name.encode(), hashlib.sha256).digest()
    mailbox = hmac.new(key, b"stunfwd/v2/mailbox", hashlib.sha256).hexdigest()
    offer = {
        "v": 2, "role": role, "id": "0" * 32, "nonce": "1" * 32, "ts": int(time.time()),
        "candidates": ["127.0.0.1:9"], "host": 1, "relay": 0, "turn": False,
        "fp": "ab" * 32, "nat": "open", "mac": "00" * 32,
    }
    body = json.dumps({"room": mailbox, "role": role, "data": json.dumps(offer)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        answer.read()


class Rendezvous:
    """A rendezvous + STUN server and configs that point at it."""

    def __init__(self, server: stunfwd.SignalServer) -> None:
        self.server = server

    def config(self, mode: str, room_name: str, secret: str = "s3cret",
               mappings: Tuple[str, ...] = (), **extra: Any) -> Dict[str, Any]:
        """A config for ``mode`` in ``room_name``, bound to loopback."""
        config: Dict[str, Any] = {
            "mode": mode,
            "room": room_name,
            "secret": secret,
            "signalUrl": self.server.url,
            "stunServers": [self.server.stun_addr],
            "bind": "127.0.0.1:0",
            "mappings": list(mappings),
        }
        config.update(extra)
        return config

    def pair(self, *mappings: str, timeout: float = 20.0) -> Tuple[stunfwd.Engine, stunfwd.Engine]:
        """A connected (server, client) pair; the client has ``mappings``."""
        name = room()
        server = stunfwd.Engine(self.config("server", name))
        try:
            client = stunfwd.Engine(self.config("client", name, mappings=mappings))
        except BaseException:
            server.stop()
            raise
        try:
            client.wait_connected(timeout)
            server.wait_connected(timeout)
        except BaseException:
            client.stop()
            server.stop()
            raise
        return server, client


@pytest.fixture(scope="session")
def rendezvous() -> Iterator[Rendezvous]:
    with stunfwd.SignalServer(http="127.0.0.1:0", stun="127.0.0.1:0") as server:
        yield Rendezvous(server)


def _serve_tcp_echo(listener: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return

        def echo(c: socket.socket) -> None:
            with c:
                while True:
                    try:
                        data = c.recv(65536)
                        if not data:
                            return
                        c.sendall(data)
                    except OSError:
                        return

        threading.Thread(target=echo, args=(conn,), daemon=True).start()


@pytest.fixture
def tcp_echo() -> Iterator[int]:
    """A TCP echo service on loopback; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    thread = threading.Thread(target=_serve_tcp_echo, args=(listener, stop), daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


@pytest.fixture
def udp_echo() -> Iterator[int]:
    """A UDP echo service on loopback; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(5)
    sock.close()


def thread_count() -> int:
    """OS threads of this process (Rust threads included)."""
    return len(os.listdir("/proc/self/task"))


def thread_names() -> List[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return sorted(names)

"""End to end on loopback: two engines and the in-process rendezvous, real sockets."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from typing import List

from conftest import Rendezvous

import stunfwd

SIZE = 10 * 1024 * 1024


def _read_all(sock: socket.socket) -> bytes:
    chunks: List[bytes] = []
    while True:
        data = sock.recv(256 * 1024)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def test_tcp_10_mb_each_way_arrives_intact(rendezvous: Rendezvous) -> None:
    upload = os.urandom(SIZE)
    download = os.urandom(SIZE)
    # The target sends its own 10 MB and keeps what it receives.
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(30)
    received_by_target: List[bytes] = []

    def serve() -> None:
        conn, _ = target.accept()
        with conn:
            conn.settimeout(60)
            writer = threading.Thread(target=_send_all, args=(conn, download))
            writer.start()
            received_by_target.append(_read_all(conn))
            writer.join()

    server_thread = threading.Thread(target=serve)
    server_thread.start()
    server, client = rendezvous.pair(f"tcp:0:{target.getsockname()[1]}")
    with server, client:
        (mapping,) = client.mappings()
        with socket.create_connection(mapping.listen, timeout=60) as s:
            writer = threading.Thread(target=_send_all, args=(s, upload))
            writer.start()
            got = _read_all(s)
            writer.join()
        server_thread.join(60)
        target.close()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(download).hexdigest()
        assert len(received_by_target) == 1
        assert hashlib.sha256(received_by_target[0]).hexdigest() == hashlib.sha256(upload).hexdigest()
        totals = client.stats()["totals"]
        assert totals["bytes_sent"] == SIZE
        assert totals["bytes_received"] == SIZE
        assert totals["connections_opened"] == 1


def test_udp_datagram_round_trips(rendezvous: Rendezvous, udp_echo: int) -> None:
    server, client = rendezvous.pair(f"udp:0:{udp_echo}")
    with server, client, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        (mapping,) = client.mappings()
        assert mapping.proto == "udp"
        s.settimeout(2)
        payload = b"ping through the tunnel " + os.urandom(512)
        for _ in range(5):
            s.sendto(payload, mapping.listen)
            try:
                data, _ = s.recvfrom(65536)
            except socket.timeout:
                continue
            assert data == payload
            break
        else:
            raise AssertionError("no datagram came back within 5 tries")
        # Counted just after the datagram is handed to the local socket: allow a moment.
        deadline = time.monotonic() + 2
        while client.stats()["totals"]["datagrams_received"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        totals = client.stats()["totals"]
        assert totals["datagrams_sent"] >= 1
        assert totals["datagrams_received"] >= 1


def test_mapping_added_later_forwards(rendezvous: Rendezvous, tcp_echo: int) -> None:
    server, client = rendezvous.pair()
    with server, client:
        mapping_id = client.add_mapping(f"tcp:0:{tcp_echo}")
        with socket.create_connection(client.mapping_addr(mapping_id), timeout=20) as s:
            s.sendall(b"hello")
            assert s.recv(5) == b"hello"
        client.remove_mapping(mapping_id)
        assert client.mappings() == []


def test_connected_state_has_details(rendezvous: Rendezvous) -> None:
    server, client = rendezvous.pair()
    with server, client:
        info = client.state_info
        assert info.state is stunfwd.State.CONNECTED
        assert info.is_connected
        assert info.path is stunfwd.PathKind.LAN
        # Each client has a socket of its own on the server (its session's).
        session = next(c for c in server.stats()["clients"] if c["id"] == client.stats()["client_id"])
        host, port = session["local_addr"].rsplit(":", 1)
        assert info.peer == (host, int(port))
        assert str(info).startswith("connected (lan to 127.0.0.1:")
        stats = client.stats()
        assert stats["mode"] == "client"
        assert stats["state"]["state"] == "connected"
        assert stats["rtt_ms"] is not None
    assert client.state is stunfwd.State.STOPPED
    assert client.stopped

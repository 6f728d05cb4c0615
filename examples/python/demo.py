#!/usr/bin/env python3
"""stunfwd in one process: the rendezvous (with STUN), an exposing peer and a
connecting peer on loopback, a TCP echo and a UDP echo forwarded through the tunnel.
Prints each step with its time and checks its own result: exits 0 only if every byte
came back intact.

    python demo.py [--bytes N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import threading
import time
from typing import List

import stunfwd

T0 = time.monotonic()


def step(what: str) -> None:
    print(f"[{(time.monotonic() - T0) * 1000:8.1f} ms] {what}", flush=True)


def tcp_echo() -> socket.socket:
    """A TCP echo service on loopback (daemon threads: it lives as long as the demo)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener


def udp_echo() -> socket.socket:
    """A UDP echo service on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65536)
            except OSError:
                return
            sock.sendto(data, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock


def send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def tcp_round_trip(addr: stunfwd.Address, payload: bytes) -> bytes:
    """Sends ``payload`` to ``addr`` while reading back what the echo returns."""
    with socket.create_connection(addr, timeout=30) as s:
        writer = threading.Thread(target=send_all, args=(s, payload), daemon=True)
        writer.start()
        chunks: List[bytes] = []
        while data := s.recv(256 * 1024):
            chunks.append(data)
        writer.join()
    return b"".join(chunks)


def udp_round_trip(addr: stunfwd.Address, payload: bytes) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for _ in range(5):
            s.sendto(payload, addr)
            try:
                data, _ = s.recvfrom(65536)
            except socket.timeout:
                continue
            return data == payload
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description="stunfwd end to end on loopback")
    parser.add_argument("--bytes", type=int, default=4 * 1024 * 1024,
                        help="bytes to echo through the TCP mapping (4 MiB)")
    args = parser.parse_args()
    print("stunfwd demo: rendezvous, STUN and two peers in one process on loopback")
    tcp_target, udp_target = tcp_echo(), udp_echo()
    step(f"echo services on tcp {tcp_target.getsockname()[1]} "
         f"and udp {udp_target.getsockname()[1]}")

    with stunfwd.SignalServer(http="127.0.0.1:0", stun="127.0.0.1:0") as rendezvous:
        step(f"rendezvous at {rendezvous.url}, STUN at {rendezvous.stun_addr}")
        common = {
            "room": f"demo-{os.getpid()}",
            "secret": os.urandom(16).hex(),
            "signalUrl": rendezvous.url,
            "stunServers": [rendezvous.stun_addr],
            "bind": "127.0.0.1:0",
        }
        with stunfwd.Engine({**common, "mode": "server"}) as server, \
                stunfwd.Engine({**common, "mode": "client"}) as client:
            tcp_id = client.add_mapping(f"tcp:0:{tcp_target.getsockname()[1]}")
            udp_id = client.add_mapping(f"udp:0:{udp_target.getsockname()[1]}")
            step("both peers started; mappings: "
                 + ", ".join(f"{m.spec} on port {m.listen[1]}" for m in client.mappings()))
            info = client.wait_connected(20)
            server.wait_connected(20)
            step(f"tunnel up: {info}")

            payload = os.urandom(args.bytes)
            started = time.monotonic()
            echoed = tcp_round_trip(client.mapping_addr(tcp_id), payload)
            took = time.monotonic() - started
            tcp_ok = hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            step(f"tcp: {len(payload)} bytes each way in {took * 1000:.0f} ms, "
                 f"{'intact' if tcp_ok else 'CORRUPTED'}")

            udp_ok = udp_round_trip(client.mapping_addr(udp_id), b"stunfwd demo datagram")
            step(f"udp: datagram {'came back' if udp_ok else 'LOST'}")

            stats = client.stats()
            totals = stats["totals"]
            step(f"client stats: path {stats['path']}, rtt {stats['rtt_ms']:.2f} ms, "
                 f"{totals['bytes_sent']} bytes sent, {totals['bytes_received']} received, "
                 f"{totals['datagrams_received']} datagrams received, "
                 f"connected in {stats['timings']['time_to_connected_ms']:.1f} ms")
        step("peers stopped")
    step("rendezvous stopped")
    tcp_target.close()
    udp_target.close()
    if tcp_ok and udp_ok:
        print("demo OK")
        return 0
    print("demo FAILED")
    return 1


if __name__ == "__main__":
    sys.exit(main())

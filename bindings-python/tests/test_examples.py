"""The examples in examples/python run as documented."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, List

from conftest import Rendezvous, room

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def _read_until(stream: IO[str], pattern: str, timeout: float, seen: List[str]) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in {seen!r}")


def test_expose_and_connect(rendezvous: Rendezvous, tcp_echo: int) -> None:
    common = [
        "--signal-url", rendezvous.server.url,
        "--stun", str(rendezvous.server.stun_addr),
        "--room", room(),
        "--bind", "127.0.0.1:0",
    ]
    env = {**os.environ, "STUNFWD_SECRET": "example secret"}
    expose = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "expose.py"), *common, "--port", str(tcp_echo)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    connect = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "connect.py"), *common, "--local-port", "0",
         "--remote-port", str(tcp_echo)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    seen: List[str] = []
    try:
        assert connect.stdout is not None and expose.stdout is not None
        listening = _read_until(connect.stdout, r"listening on 127\.0\.0\.1:(\d+)", 20, seen)
        _read_until(connect.stdout, r"tunnel up: connected", 30, seen)
        with socket.create_connection(("127.0.0.1", int(listening.group(1))), timeout=20) as s:
            s.sendall(b"through the examples")
            assert s.recv(64) == b"through the examples"
        _read_until(expose.stdout, r"state: connected", 10, seen)
        for child in (connect, expose):
            child.send_signal(signal.SIGINT)
        out_connect, _ = connect.communicate(timeout=20)
        out_expose, _ = expose.communicate(timeout=20)
    finally:
        for child in (connect, expose):
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert connect.returncode == 0, out_connect
    assert expose.returncode == 0, out_expose
    assert "stopped: 1 connections" in out_connect
    assert "stopped: served 1 connections" in out_expose


def test_demo_checks_itself() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--bytes", "262144"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("demo OK")

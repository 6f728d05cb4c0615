#!/usr/bin/env python3
"""The client side: reach the port that expose.py exposes, on a local port (2222).

    python connect.py --signal-url http://rendezvous.example.org:8080/ \\
        --stun rendezvous.example.org:3478 --room my-home-box
    ssh -p 2222 localhost

The secret comes from $STUNFWD_SECRET (or --secret). Prints the tunnel's path once it
is up, and the traffic figures when Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import stunfwd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal-url", required=True, help="the rendezvous server's URL")
    parser.add_argument("--stun", action="append", default=[],
                        help="a STUN server, host:port (repeat for more)")
    parser.add_argument("--room", required=True, help="the room both sides meet in")
    parser.add_argument("--secret", default=os.environ.get("STUNFWD_SECRET"),
                        help="shared secret (default: $STUNFWD_SECRET)")
    parser.add_argument("--local-port", type=int, default=2222,
                        help="local TCP port to listen on (2222; 0 for any)")
    parser.add_argument("--remote-port", type=int, default=22,
                        help="the port exposed on the other side (22)")
    parser.add_argument("--bind", default="[::]:0", help="the tunnel's UDP socket (default: IPv4 and IPv6)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the tunnel (60)")
    args = parser.parse_args()
    if not args.secret:
        parser.error("set a secret with --secret or $STUNFWD_SECRET")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = {
        "mode": "client",
        "room": args.room,
        "secret": args.secret,
        "signalUrl": args.signal_url,
        "stunServers": args.stun,
        "bind": args.bind,
    }
    try:
        with stunfwd.Engine(config) as engine:
            mapping = engine.add_mapping(f"tcp:{args.local_port}:{args.remote_port}")
            host, port = engine.mapping_addr(mapping)
            print(f"listening on {host}:{port} -> port {args.remote_port} on the peer",
                  flush=True)
            info = engine.wait_connected(args.timeout)
            print(f"tunnel up: {info}", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                totals = engine.stats()["totals"]
                print(f"stopped: {totals['connections_opened']} connections, "
                      f"{totals['bytes_sent']} bytes sent, "
                      f"{totals['bytes_received']} bytes received", flush=True)
    except KeyboardInterrupt:
        print("stopped before the tunnel came up", flush=True)
    except stunfwd.StunfwdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

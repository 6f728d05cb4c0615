#!/usr/bin/env python3
"""The server side: expose this machine's SSH port (22) to one peer behind another NAT.

    python expose.py --signal-url http://rendezvous.example.org:8080/ \\
        --stun rendezvous.example.org:3478 --room my-home-box

The secret comes from $STUNFWD_SECRET (or --secret); both sides must share it. The peer
runs connect.py with the same room and secret, then `ssh -p 2222 localhost`. Only the
exposed port can be reached: the allow rule names it. Ctrl-C stops.
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
    parser.add_argument("--port", type=int, default=22, help="local TCP port to expose (22)")
    parser.add_argument("--bind", default="[::]:0", help="the tunnel's UDP socket (default: IPv4 and IPv6)")
    args = parser.parse_args()
    if not args.secret:
        parser.error("set a secret with --secret or $STUNFWD_SECRET")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = {
        "mode": "server",
        "room": args.room,
        "secret": args.secret,
        "signalUrl": args.signal_url,
        "stunServers": args.stun,
        "bind": args.bind,
        "allow": [f"tcp:127.0.0.1:{args.port}"],
    }

    def on_event(event: stunfwd.Event) -> None:
        if isinstance(event, stunfwd.StateChanged):
            print(f"state: {event.info}", flush=True)
        elif isinstance(event, stunfwd.PeerRejected):
            print(f"rejected a peer: {event.reason}", flush=True)

    try:
        with stunfwd.Engine(config, on_event=on_event) as engine:
            print(f"exposing 127.0.0.1:{args.port} in room {args.room!r}; Ctrl-C stops",
                  flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                totals = engine.stats()["totals"]
                print(f"stopped: served {totals['connections_opened']} connections, "
                      f"{totals['bytes_received']} bytes in, {totals['bytes_sent']} bytes out",
                      flush=True)
    except stunfwd.StunfwdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One stunfwd peer run by the Python binding, for the bench rows that measure the
library under it (issue #19): ``python py_peer.py CONFIG.json``.

Prints ``state: connected`` as ``stunfwd run`` does, then runs until killed.
"""

import sys
import time

import stunfwd

with stunfwd.Engine(sys.argv[1]) as engine:
    engine.wait_connected(20)
    print("state: connected", flush=True)
    while True:
        time.sleep(3600)

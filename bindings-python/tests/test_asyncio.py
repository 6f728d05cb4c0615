"""The asyncio flavour: waits run off the event loop."""

from __future__ import annotations

import asyncio
import time
from typing import List

import pytest
from conftest import Rendezvous, room

import stunfwd


def test_wait_and_stop_under_asyncio_run(rendezvous: Rendezvous) -> None:
    async def main() -> stunfwd.StateInfo:
        name = room()
        ticks: List[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        async with stunfwd.Engine(rendezvous.config("server", name)) as server:
            client = stunfwd.Engine(rendezvous.config("client", name))
            async with client:
                info = await client.wait_connected_async(20)
                await server.wait_connected_async(20)
                # The loop kept running while nothing connected yet, too.
                lone = stunfwd.Engine(rendezvous.config("client", room()))
                started = time.monotonic()
                with pytest.raises(stunfwd.TimeoutError):
                    await lone.wait_connected_async(0.5)
                ended = time.monotonic()
                await lone.stop_async()
        tick_task.cancel()
        during = [t for t in ticks if started <= t <= ended]
        assert len(during) > 20, f"the event loop ran only {len(during)} times in 0.5 s"
        assert client.stopped and server.stopped
        return info

    info = asyncio.run(main())
    assert info.state is stunfwd.State.CONNECTED


def test_cancelling_the_wait_ends_it(rendezvous: Rendezvous) -> None:
    async def main() -> float:
        async with stunfwd.Engine(rendezvous.config("client", room())) as engine:
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(engine.wait_connected_async(30), 0.3)
            return time.monotonic() - started

    started = time.monotonic()
    waited = asyncio.run(main())
    assert waited < 2
    # asyncio.run waits for the executor thread: it must have ended promptly.
    assert time.monotonic() - started < 5

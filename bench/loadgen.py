"""An open-loop HTTP load generator: Poisson arrivals at a fixed rate over keep-alive connections.

Each request is scheduled at its arrival time whether or not earlier ones have been answered,
and its latency is measured from that scheduled time, so a slow server shows as latency
rather than as a lower offered rate (no coordinated omission). It runs in a process of its
own, pinned to CPUs the server does not use when the machine has them.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

SPIN_S = 0.002
"""How long before a request's time the generator stops sleeping and yields until it."""


@dataclass(frozen=True)
class LoadRun:
    offered: float  # requests per second scheduled
    achieved: float  # answered with 200 per second
    latencies: list[float]  # seconds, from each request's scheduled time to its answer
    failed: int  # answers other than 200, and broken connections


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def _load(url: str, rate: float, seconds: float, connections: int, seed: int) -> LoadRun:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    failed = 0

    async def connection() -> None:
        nonlocal failed
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (scheduled := await queue.get()) is not None:
                try:
                    status = await _one(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError):
                    failed += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - scheduled)
                else:
                    failed += 1
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    rng = random.Random(seed)
    began = time.perf_counter()
    at, sent = began, 0
    while at - began < seconds:
        at += rng.expovariate(rate)
        # the loop's timers wake up to a millisecond late, which would be counted as the
        # server's latency: sleep to within 2 ms, then yield until the time (this process has
        # a core of its own); answers are read meanwhile
        delay = at - time.perf_counter()
        if delay > SPIN_S:
            await asyncio.sleep(delay - SPIN_S)
        while time.perf_counter() < at:
            await asyncio.sleep(0)
        queue.put_nowait(at)
        sent += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - began
    return LoadRun(sent / seconds, len(latencies) / elapsed, latencies, failed)


def run(
    url: str,
    rate: float,
    seconds: float,
    connections: int = 50,
    seed: int = 0,
    cpus: set[int] | None = None,
) -> LoadRun:
    """Offer `rate` requests/s of GET `url` for `seconds`; in the calling process, pinned to
    `cpus` when given."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        import uvloop  # uvicorn's loop: less of the generator's own time in each latency
    except ImportError:
        return asyncio.run(_load(url, rate, seconds, connections, seed))
    return uvloop.run(_load(url, rate, seconds, connections, seed))

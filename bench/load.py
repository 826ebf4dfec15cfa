"""Does the app stay responsive under load? Latency of ordinary requests (the dashboard's
job list and a dataset's details) while, at the same time: concurrent uploads, some of them
slow-loris clients that stall mid-body, bursts of job submissions, and many SSE clients on the
dashboard's live stream. Measured against the same requests with no load, in one run, with
the app's peak RSS in both phases.

    python bench/load.py                  # Postgres + Redis, as in production
    python bench/load.py --mode embedded  # SQLite + the embedded broker

Nothing trains: the jobs go to a queue no worker serves (they are cancelled at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_metrics import ROOT, Environment, percentile, setup


def rows(count: int, salt: str) -> bytes:
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": f"{salt} {i}"}, {"role": "assistant", "content": "ok"}]})
        + "\n"
        for i in range(count)
    ).encode()


class RssWatch:
    """The peak resident memory of a process (and its children) while the block runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                processes = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in processes))
            except psutil.Error:
                pass

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()


async def probe(client: httpx.AsyncClient, dataset_id: int, seconds: float) -> list[float]:
    """Ordinary requests, one after another, for `seconds`: their latencies."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/api/jobs?limit=50", f"/api/datasets/{dataset_id}", "/healthz"):
            started = time.perf_counter()
            response = await client.get(path)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return latencies


async def uploads(client: httpx.AsyncClient, count: int, size_rows: int) -> list[int]:
    async def one(i: int) -> int:
        response = await client.post("/api/datasets", files={"file": (f"load-{i}.jsonl", rows(size_rows, f"u{i}"))})
        return response.status_code

    return await asyncio.gather(*(one(i) for i in range(count)))


def slow_loris(url: str, token: str, count: int) -> list[socket.socket]:
    """Uploads that send their headers and a little of the body, then nothing."""
    parts = urlsplit(url)
    held = []
    for _ in range(count):
        sock = socket.create_connection((parts.hostname, parts.port))
        sock.sendall(
            f"POST /api/datasets HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000000\r\n\r\n"
            '--b\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n\r\n{"te'.encode()
        )
        held.append(sock)
    return held


async def job_bursts(client: httpx.AsyncClient, dataset_id: int, bursts: int, size: int) -> list[int]:
    body = {"spec": {"base_model": "tiny-llama", "max_steps": 1}, "dataset_id": dataset_id, "queue": "nobody-serves"}
    codes: list[int] = []
    for _ in range(bursts):
        responses = await asyncio.gather(*(client.post("/api/jobs", json=body) for _ in range(size)))
        codes += [response.status_code for response in responses]
        await asyncio.sleep(0.5)
    return codes


async def stream_clients(client: httpx.AsyncClient, count: int, seconds: float) -> int:
    """`count` dashboards on the live stream; how many got their snapshot."""

    async def one() -> bool:
        try:
            async with asyncio.timeout(seconds):
                async with client.stream("GET", "/api/stream") as response:
                    async for line in response.aiter_lines():
                        if line == "event: snapshot":
                            got[0] += 1
                    return True
        except TimeoutError:
            return True

    got = [0]
    await asyncio.gather(*(one() for _ in range(count)))
    return got[0]


async def run(url: str, token: str, loris_token: str, dataset_id: int, server_pid: int, args) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        with RssWatch(server_pid) as idle_rss:
            quiet = await probe(client, dataset_id, args.seconds)
        held = slow_loris(url, loris_token, args.slow_clients)
        with RssWatch(server_pid) as load_rss:
            loaded, upload_codes, job_codes, snapshots = await asyncio.gather(
                probe(client, dataset_id, args.seconds),
                uploads(client, args.uploads, args.upload_rows),
                job_bursts(client, dataset_id, args.bursts, args.burst_size),
                stream_clients(client, args.streams, args.seconds),
            )
        for sock in held:
            sock.close()
        for job in (await client.get("/api/jobs?limit=200")).json()["data"]:
            await client.post(f"/api/jobs/{job['id']}/cancel")

    q50, q95 = percentile(quiet, 0.5), percentile(quiet, 0.95)
    l50, l95 = percentile(loaded, 0.5), percentile(loaded, 0.95)
    print(
        f"[{args.mode}] ordinary requests, no load:   p50 {q50 * 1000:.1f} ms, p95 {q95 * 1000:.1f} ms ({len(quiet)})"
    )
    print(
        f"[{args.mode}] ordinary requests, under load: p50 {l50 * 1000:.1f} ms, p95 {l95 * 1000:.1f} ms ({len(loaded)})"
    )
    print(f"[{args.mode}] ratio under load / no load: p50 {l50 / q50:.2f}, p95 {l95 / q95:.2f}")
    print(
        f"[{args.mode}] the load: {args.uploads} uploads of {args.upload_rows} rows "
        f"(answers {sorted(set(upload_codes))}), {args.slow_clients} stalled uploads of another member "
        f"(past the per-user bound of {args.uploads}, refused at once with 429), "
        f"{len(job_codes)} job submissions in {args.bursts} bursts (answers {sorted(set(job_codes))}), "
        f"{args.streams} SSE clients ({snapshots} got their snapshot)"
    )
    print(
        f"[{args.mode}] app peak RSS: {idle_rss.peak / 2**20:.0f} MiB with no load, "
        f"{load_rss.peak / 2**20:.0f} MiB under load (ratio {load_rss.peak / idle_rss.peak:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["redis", "embedded"], default="redis")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--uploads", type=int, default=12)
    parser.add_argument("--upload-rows", type=int, default=20_000)
    parser.add_argument("--slow-clients", type=int, default=30)
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--burst-size", type=int, default=20)
    parser.add_argument("--streams", type=int, default=50)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    env = Environment(args.mode)
    # One member uploads a dozen files at once; another runs the stalled clients. The bounds on
    # uploads in flight (per user, per process) are raised to let the first one's through.
    env.env.update(TUNELAB_MAX_UPLOADS_PER_USER=str(args.uploads), TUNELAB_MAX_CONCURRENT_UPLOADS=str(2 * args.uploads))
    try:
        url, token, dataset_id, _port = setup(env)
        env.cli("user", "create", "loris@example.com", "--password", "bench password", "--team", "bench")
        loris_token = env.cli("token", "create", "loris@example.com").strip()
        server = next(p for p in env.processes if p.poll() is None)
        asyncio.run(run(url, token, loris_token, dataset_id, server.pid, args))
    finally:
        env.close()


if __name__ == "__main__":
    main()

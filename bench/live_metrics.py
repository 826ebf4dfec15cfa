"""How live is "live": delay from a worker reporting a metric point to an SSE client
receiving it, and from submitting a job to it running on an idle worker.

    python bench/live_metrics.py                  # both modes
    python bench/live_metrics.py --mode redis     # Postgres + Redis (production)
    python bench/live_metrics.py --mode embedded  # SQLite + embedded broker, no Redis

The reporting side is the worker's real reporter (`worker.database_reporter.DatabaseReporter`); the
receiving side is an HTTP client on the job's SSE stream of a uvicorn server. The baseline,
measured in the same run, is a dashboard without a stream: polling GET /metrics once a second.
Targets on loopback: p95 under 100 ms with Redis, under 1 s embedded; submit to running under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get("TUNELAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TUNELAB_TEST_REDIS", "redis://127.0.0.1:6379/0")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Environment:
    """A fresh database, data dir, user and token for one mode, and the processes to serve it."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tunelab-bench-{mode}-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}
        self.env.update(
            TUNELAB_DATA_DIR=str(self.tmp / "data"),
            TUNELAB_SECRET_KEY=secrets.token_urlsafe(40),
            TUNELAB_BROKER_POLLING_INTERVAL_S="0.1",
        )
        self.database = None
        if mode == "redis":
            self.database = f"tunelab_bench_{secrets.token_hex(4)}"
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{self.database}"')
            self.env.update(
                TUNELAB_DATABASE_URL=f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{self.database}",
                TUNELAB_BROKER_URL=REDIS,
                TUNELAB_REDIS_URL=REDIS,
            )
        for name in [name for name in os.environ if name.startswith("TUNELAB_")]:
            del os.environ[name]
        os.environ.update(self.env)
        self.processes: list[subprocess.Popen] = []

    def cli(self, *args: str) -> str:
        tunelab = Path(sys.executable).parent / "tunelab"
        return subprocess.run([str(tunelab), *args], env=self.env, check=True, capture_output=True, text=True).stdout

    def start(self, *command: str) -> subprocess.Popen:
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
        if self.database:
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


def setup(env: Environment) -> tuple[str, str, int, int]:
    env.cli("migrate")
    env.cli("user", "create", "bench@example.com", "--password", "bench password", "--team", "bench")
    token = env.cli("token", "create", "bench@example.com").strip()
    env.cli("models", "make-tiny", "tiny-llama")
    port = free_port()
    env.start(sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    headers = {"Authorization": f"Bearer {token}"}
    rows = "".join(
        json.dumps(
            {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
        )
        + "\n"
        for i in range(32)
    )
    upload = httpx.post(
        f"{url}/api/datasets", headers=headers, files={"file": ("chat.jsonl", rows.encode())}, timeout=60
    )
    upload.raise_for_status()
    return url, token, upload.json()["id"], port


def measure_stream_delay(url: str, token: str, dataset_id: int, points: int, interval_s: float):
    """A job put in state running by hand (no worker), fed by the real reporter."""
    from app.core.blobs import blob_store
    from app.core.database import session_scope
    from app.core.tables import Job, JobState
    from app.jobs.states import transition
    from worker.database_reporter import DatabaseReporter

    headers = {"Authorization": f"Bearer {token}"}
    body = {"spec": {"base_model": "tiny-llama", "max_steps": points}, "dataset_id": dataset_id, "queue": "nobody"}
    job_id = httpx.post(f"{url}/api/jobs", headers=headers, json=body, timeout=30).json()["id"]
    with session_scope() as session:
        transition(session, session.get(Job, job_id), JobState.running)

    reported: dict[int, float] = {}
    streamed: dict[int, float] = {}
    polled: dict[int, float] = {}
    ready = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{url}/api/jobs/{job_id}/stream", headers=headers, timeout=None) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                    ready.set()
                elif line.startswith("data:") and event == "metric":
                    streamed[json.loads(line[5:])["step"]] = time.perf_counter()
                if len(streamed) >= points or done.is_set():
                    return

    def poll() -> None:
        """The baseline: a page that polls the metrics endpoint once a second."""
        after = -1
        while not done.is_set():
            for point in httpx.get(
                f"{url}/api/jobs/{job_id}/metrics", params={"after_step": after}, headers=headers, timeout=30
            ).json():
                polled.setdefault(point["step"], time.perf_counter())
                after = max(after, point["step"])
            if len(polled) >= points:
                return
            time.sleep(1.0)

    listener, poller = threading.Thread(target=listen, daemon=True), threading.Thread(target=poll, daemon=True)
    listener.start()
    ready.wait(10)
    poller.start()
    reporter = DatabaseReporter(job_id, blob_store()).start()
    for step in range(1, points + 1):
        reported[step] = time.perf_counter()
        reporter.log({"loss": 1.0 / step, "learning_rate": 1e-4}, step)
        time.sleep(interval_s)
    reporter.close()
    listener.join(30)
    poller.join(30)
    done.set()
    lost = points - len(streamed)
    stream_delays = [streamed[s] - reported[s] for s in streamed]
    poll_delays = [polled[s] - reported[s] for s in polled]
    return stream_delays, poll_delays, lost


def measure_submit_to_running(env: Environment, url: str, token: str, dataset_id: int, runs: int) -> list[float]:
    from app.core.database import session_scope
    from app.core.tables import Job, JobState, WorkerProcess

    queue = f"bench-{secrets.token_hex(3)}"
    # The production command: one CPU worker, a fresh pool process for every job.
    env.start(str(Path(sys.executable).parent / "tunelab"), "worker", "--queues", queue, "--gpus", "none")
    for _ in range(600):
        with session_scope() as session:
            if session.query(WorkerProcess).filter(WorkerProcess.queues == queue).first():
                break
        time.sleep(0.1)
    time.sleep(2)  # let the pool child finish starting: an idle worker, as in production
    headers = {"Authorization": f"Bearer {token}"}
    delays = []
    for _ in range(runs):
        body = {"spec": {"base_model": "tiny-llama", "max_steps": 100000}, "dataset_id": dataset_id, "queue": queue}
        started = time.perf_counter()
        job_id = httpx.post(f"{url}/api/jobs", headers=headers, json=body, timeout=30).json()["id"]
        while True:
            with session_scope() as session:
                state = session.get(Job, job_id).state
            if state != JobState.queued:
                delays.append(time.perf_counter() - started)
                break
            time.sleep(0.002)
        httpx.post(f"{url}/api/jobs/{job_id}/cancel", headers=headers, timeout=30)
        while True:
            with session_scope() as session:
                if session.get(Job, job_id).state.is_terminal:
                    break
            time.sleep(0.05)
        # Idle again: a training worker replaces its pool process after every job (all of the
        # job's memory returned), which takes it one to three seconds on a loaded 2-core machine.
        time.sleep(8)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["redis", "embedded", "both"], default="both")
    parser.add_argument("--points", type=int, default=300, help="metric points reported")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between points")
    parser.add_argument("--submits", type=int, default=5, help="jobs submitted to an idle worker")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    targets = {"redis": 0.100, "embedded": 1.0}
    for mode in ["redis", "embedded"] if args.mode == "both" else [args.mode]:
        env = Environment(mode)
        try:
            from app.config import get_settings
            from app.core import queue
            from app.core.database import reset_engines

            get_settings.cache_clear()
            queue.get_celery.cache_clear()
            reset_engines()
            url, token, dataset_id, _port = setup(env)
            stream, polled, lost = measure_stream_delay(url, token, dataset_id, args.points, args.interval)
            submit = measure_submit_to_running(env, url, token, dataset_id, args.submits)
        finally:
            env.close()
        p50, p95 = percentile(stream, 0.5), percentile(stream, 0.95)
        base95 = percentile(polled, 0.95) if polled else float("nan")
        print(
            f"[{mode}] report -> SSE receipt over {len(stream)} points: p50 {p50 * 1000:.1f} ms, "
            f"p95 {p95 * 1000:.1f} ms, max {max(stream) * 1000:.1f} ms, lost {lost}"
        )
        print(
            f"[{mode}] baseline (polling GET /metrics every 1 s): p50 {percentile(polled, 0.5) * 1000:.1f} ms, "
            f"p95 {base95 * 1000:.1f} ms"
        )
        print(f"[{mode}] ratio p95 stream / p95 polling baseline: {p95 / base95:.3f}")
        print(
            f"[{mode}] ratio p95 / target {targets[mode] * 1000:.0f} ms: {p95 / targets[mode]:.2f} "
            f"({'met' if p95 < targets[mode] else 'MISSED'})"
        )
        print(
            f"[{mode}] submit -> running on an idle worker over {len(submit)} jobs: "
            f"median {statistics.median(submit) * 1000:.0f} ms, max {max(submit) * 1000:.0f} ms "
            f"(each: {', '.join(f'{s * 1000:.0f}' for s in submit)} ms) "
            f"(target 1000 ms: {'met' if max(submit) < 1.0 else 'MISSED'})"
        )
        print(f"[{mode}] ratio max submit->running / 1 s target: {max(submit):.2f}")


if __name__ == "__main__":
    main()

"""Dataset ingest benchmark: upload a large chat JSONL through the real HTTP endpoint.

    .venv/bin/python bench/ingest.py                 # 512 MB, the full app (POST /api/datasets)
    .venv/bin/python bench/ingest.py --size-mb 50    # a quick run
    .venv/bin/python bench/ingest.py --core-only     # receive_upload alone, in a minimal app
    .venv/bin/python bench/ingest.py --core-only --validator thread   # validation in a thread instead

It generates (once, cached under bench/out/) a chat JSONL of mixed, realistic rows; measures
plain parsing of its lines with json.loads and orjson.loads (`for line in file: loads(line)`,
before and after the upload, the faster kept); starts a server in a temporary data dir; uploads
the file as multipart (field `file`) while sampling the RSS of the server and of its validator
process and timing a cheap request every 50 ms (the event loop must stay responsive); and
prints throughput, peak RSS and the ingest / parse ratios. The machine should be otherwise
idle: ingest uses two cores (server and validator process), plain parsing one.

The full mode runs `uvicorn app.main:app` and makes a user and a token with the `tunelab` CLI.
`--core-only` instead serves `core_app` below: the same streaming receive + hash + write +
validate + stats, without the database, for measuring the core on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "bench" / "out"
ENDPOINT = "/api/datasets"

# -- the data -------------------------------------------------------------------------------

_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the model data training learning rate loss token batch gradient layer attention weight value query "
    "key network output input sequence prompt answer question explain why how what when where python "
    "function return list dict string number error file line format json request server user team a an "
    "is are was were be been to of in on for with as by at from this that these those it its we you they "
    "can should would could will may might must do does did have has had not no yes if then else because "
    "so but or and café naïve über déjà résumé Straße señor 数据 模型 训练 こんにちは 안녕하세요 😀 🚀 "
).split()
_CODE = (
    "```python\ndef load(path):\n    with open(path) as f:\n        return [json.loads(l) for l in f]\n```",
    'Run `pip install "peft>=0.17"` and set\t"lora_r": 16 in the config (see C:\\configs\\lora.json).',
    '<div class="note">Use &lt;b&gt; for bold</div>',
)
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def _generate_rows(rng: random.Random):
    """Endless chat rows: system prompts, single and multi-turn, long documents, tool calls."""
    sentences = []
    for _ in range(4000):
        words = " ".join(rng.choices(_WORDS, k=rng.randint(4, 24)))
        sentences.append(words[0].upper() + words[1:] + rng.choice(".?!.."))

    def text(sentence_count: int) -> str:
        parts = rng.choices(sentences, k=max(1, sentence_count))
        if rng.random() < 0.1:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(_CODE))
        return (" " if rng.random() < 0.7 else "\n\n").join(parts)

    previous: list[bytes] = []
    while True:
        if previous and rng.random() < 0.005:  # a few exact duplicates, as real exports have
            yield rng.choice(previous)
            continue
        kind = rng.random()
        messages = [{"role": "system", "content": text(rng.randint(1, 3))}] if rng.random() < 0.6 else []
        row: dict = {"messages": messages}
        if kind < 0.1:  # a tool call and its result
            city = rng.choice(["Paris", "Lyon", "東京", "São Paulo"])
            messages += [
                {"role": "user", "content": f"What is the weather in {city}? {text(1)}"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temp_c": rng.randint(-5, 35)})},
                {"role": "assistant", "content": text(rng.randint(1, 4))},
            ]
            row["tools"] = _TOOLS
        elif kind < 0.2:  # a long document to summarise
            messages += [
                {"role": "user", "content": "Summarise this:\n\n" + text(int(rng.lognormvariate(4.0, 0.8)))},
                {"role": "assistant", "content": text(rng.randint(2, 8))},
            ]
        else:  # one to several turns
            for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
                messages.append({"role": "user", "content": text(int(rng.lognormvariate(1.0, 1.0)))})
                messages.append({"role": "assistant", "content": text(int(rng.lognormvariate(2.0, 1.2)))})
        line = orjson.dumps(row) + b"\n"
        if len(previous) < 1000:
            previous.append(line)
        yield line


def dataset(size_mb: int, seed: int = 0) -> Path:
    path = CACHE_DIR / f"chat-{size_mb}mb-seed{seed}.jsonl"
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = size_mb * 1_000_000
    partial = path.with_suffix(".part")
    written = 0
    with open(partial, "wb") as handle:
        for line in _generate_rows(random.Random(seed)):
            handle.write(line)
            written += len(line)
            if written >= target:
                break
    partial.rename(path)
    return path


def parse_speed(path: Path, loads) -> float:
    """MB/s of `for line in file: loads(line)`."""
    start = time.perf_counter()
    with open(path, "rb") as handle:
        for line in handle:
            loads(line)
    return path.stat().st_size / 1e6 / (time.perf_counter() - start)


# -- the minimal server of --core-only ------------------------------------------------------------


def core_app():
    """An ASGI app with only the upload: `uvicorn --factory --app-dir bench ingest:core_app`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from app.core.blobs import BlobStore
    from app.datasets.upload import UploadError, receive_upload
    from app.datasets.validation import DatasetValidator
    from app.datasets.validator_process import ValidatorProcess

    store = BlobStore(Path(os.environ["TUNELAB_DATA_DIR"]) / "blobs")
    validator = {"process": ValidatorProcess, "thread": DatasetValidator}[os.environ.get("BENCH_VALIDATOR", "process")]

    async def upload(request: Request) -> JSONResponse:
        try:
            async with receive_upload(request, store, max_bytes=2 * 1024**3, validator_factory=validator) as got:
                if not got.report.ok:
                    return JSONResponse(got.report.error_body(), status_code=422)
                got.commit(f"datasets/{got.sha256}.jsonl")
                body = {"format": got.report.format, "row_count": got.report.rows, "size_bytes": got.size}
                return JSONResponse({**body, "sha256": got.sha256, "stats": got.report.stats}, status_code=201)
        except UploadError as error:
            return JSONResponse({"detail": str(error)}, status_code=error.status_code)

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse([])

    return Starlette(routes=[Route(ENDPOINT, upload, methods=["POST"]), Route(ENDPOINT, listing, methods=["GET"])])


# -- the run --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli(env: dict[str, str], *args: str) -> str:
    tunelab = Path(sys.executable).with_name("tunelab")
    done = subprocess.run([str(tunelab), *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def start_server(data_dir: Path, core_only: bool, validator: str) -> tuple[subprocess.Popen, str, dict[str, str]]:
    env = {**os.environ, "TUNELAB_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "BENCH_VALIDATOR": validator}
    headers: dict[str, str] = {}
    if core_only:
        target = ["--factory", "--app-dir", str(ROOT / "bench"), "ingest:core_app"]
    else:
        target = ["app.main:app"]
        _cli(env, "migrate")
        _cli(env, "user", "create", "bench@example.com", "--password", "bench-password-1", "--team", "bench")
        headers["Authorization"] = "Bearer " + _cli(env, "token", "create", "bench@example.com")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *target, "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + ENDPOINT, headers=headers, timeout=1)
            return server, base, headers
        except httpx.TransportError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("the server did not start")
            time.sleep(0.1)


class Sampler(threading.Thread):
    """Samples the RSS of the server and of its children (the validator process), and the
    latency of a cheap request, until stopped."""

    def __init__(self, pid: int, ping_url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.ping_url, self.headers = ping_url, headers
        self.peak_rss = self.process.memory_info().rss
        self.peak_children_rss = 0
        self.latencies: list[float] = []
        self.stopped = threading.Event()

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.peak_children_rss = max(self.peak_children_rss, children)

    def run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=30) as client:
            next_ping = 0.0
            while not self.stopped.is_set():
                self._sample()
                if time.monotonic() >= next_ping:
                    start = time.perf_counter()
                    client.get(self.ping_url)
                    self.latencies.append(time.perf_counter() - start)
                    next_ping = time.monotonic() + 0.05
                time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=512, help="size of the generated file (default 512)")
    parser.add_argument("--core-only", action="store_true", help="serve receive_upload in a minimal app")
    parser.add_argument(
        "--validator",
        choices=["process", "thread"],
        default="process",
        help="with --core-only: validate in a child process (the default) or in a thread",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = dataset(args.size_mb, args.seed)
    size_mb = path.stat().st_size / 1e6
    with open(path, "rb") as handle:
        lines = sum(1 for _ in handle)
    print(f"file: {path.name}, {size_mb:.0f} MB, {lines:,} rows")
    json_speed = parse_speed(path, json.loads)
    orjson_speed = parse_speed(path, orjson.loads)

    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as data_dir:
        server, base, headers = start_server(Path(data_dir), args.core_only, args.validator)
        try:
            sampler = Sampler(server.pid, base + ENDPOINT, headers)
            idle_rss = sampler.peak_rss
            sampler.start()
            start = time.perf_counter()
            with open(path, "rb") as handle, httpx.Client(timeout=None) as client:
                response = client.post(
                    base + ENDPOINT, headers=headers, files={"file": (path.name, handle, "application/jsonl")}
                )
            elapsed = time.perf_counter() - start
            sampler.stopped.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait()

    # Parsed again after the upload, the faster run kept: a busy machine slowing the baseline
    # down would flatter the ratios.
    json_speed = max(json_speed, parse_speed(path, json.loads))
    orjson_speed = max(orjson_speed, parse_speed(path, orjson.loads))
    print(f"plain parse (best of 2): json.loads {json_speed:.0f} MB/s, orjson.loads {orjson_speed:.0f} MB/s")
    body = response.json()
    if response.status_code != 201:
        raise SystemExit(f"upload answered {response.status_code}: {json.dumps(body)[:2000]}")
    speed = size_mb / elapsed
    latencies = sorted(sampler.latencies)
    mode = f"core only, validation in a {args.validator}" if args.core_only else "full app"
    print(
        f"ingest ({mode}): {size_mb:.0f} MB in {elapsed:.2f} s = {speed:.0f} MB/s; "
        f"format {body['format']}, {body['row_count']:,} rows"
    )
    print(
        f"server RSS: idle {idle_rss / 2**20:.0f} MiB, peak {sampler.peak_rss / 2**20:.0f} MiB (target < 200 MiB); "
        f"its validator process: peak {sampler.peak_children_rss / 2**20:.0f} MiB"
    )
    print(f"ratio ingest / json.loads: {speed / json_speed:.2f}")
    print(f"ratio ingest / orjson.loads: {speed / orjson_speed:.2f} (target >= 0.50)")
    if latencies:
        print(
            f"other requests during the upload: {len(latencies)}, median {statistics.median(latencies) * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()

"""`tunelab serve`, the newcomer's first command: SQLite and the embedded broker, a training
worker and an inference worker beside the app, so chat answers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from tests.helpers import free_port, wait_for

TUNELAB = str(Path(sys.executable).parent / "tunelab")


def test_serve_answers_chat_with_its_own_inference_worker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNELAB_", "PYTEST"))}
    env.update(TUNELAB_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")

    def tunelab(*args: str) -> str:
        result = subprocess.run([TUNELAB, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    tunelab("models", "make-tiny", "tiny-llama")
    tunelab("migrate")
    tunelab("user", "create", "ada@example.com", "--password", "a long password", "--team", "research")
    token = tunelab("token", "create", "ada@example.com")

    port = free_port()
    server = subprocess.Popen(
        [TUNELAB, "serve", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def both_workers_up():
            try:
                return httpx.get(f"{url}/healthz", timeout=2).json()["workers"] == 2
            except httpx.HTTPError:
                return False

        wait_for(both_workers_up, timeout=90, interval=0.5, message="the app and its two workers")
        client = OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0, "serve stops its workers and exits cleanly"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)

"""`tunelab serve`, the newcomer's first command: SQLite and the embedded broker, a training
worker, an inference worker and a webhook worker beside the app, so chat answers at once and
webhooks go out while a job trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from tests.helpers import free_port, wait_for
from tests.webhooks.receiver import Receiver

TUNELAB = str(Path(sys.executable).parent / "tunelab")


def test_serve_answers_chat_and_sends_webhooks_with_workers_of_their_own(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNELAB_", "PYTEST"))}
    env.update(TUNELAB_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1", TUNELAB_WEBHOOKS_ALLOW_PRIVATE="true")

    def tunelab(*args: str) -> str:
        result = subprocess.run([TUNELAB, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    tunelab("models", "make-tiny", "tiny-llama")
    tunelab("migrate")
    tunelab(
        "user", "create", "ada@example.com", "--password", "a long password", "--team", "research", "--role", "owner"
    )
    token = tunelab("token", "create", "ada@example.com")
    receiver = Receiver().start()

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
                return httpx.get(f"{url}/healthz", timeout=2).json()["workers"] == 3
            except httpx.HTTPError:
                return False

        wait_for(both_workers_up, timeout=90, interval=0.5, message="the app and its three workers")
        client = OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4

        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        team_id = api.get("/api/teams").json()[0]["id"]
        webhook = api.post(
            f"/api/teams/{team_id}/webhooks", json={"url": receiver.url, "event_types": ["fine_tuning.job.failed"]}
        ).json()
        assert api.post(f"/api/teams/{team_id}/webhooks/{webhook['id']}/test").status_code == 202
        wait_for(lambda: receiver.received, timeout=30, message="the test event at the receiver")
        assert [e["type"] for e in receiver.verified(webhook["secret"])] == ["webhook.test"]
    finally:
        receiver.stop()
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0, "serve stops its workers and exits cleanly"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)


def test_serve_and_a_lora_job_log_no_noise(tmp_path):
    """What a newcomer sees in the terminal: one Celery banner, no SecurityWarning (tunelab says
    once that it runs as root, when it does), and a LoRA job without bitsandbytes' 4-bit kernel
    warning or progress bars logged as WARNING lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNELAB_", "PYTEST"))}
    env.update(TUNELAB_DATA_DIR=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)

    def tunelab(*args: str) -> str:
        result = subprocess.run([TUNELAB, *args], check=False, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    tunelab("models", "make-tiny", "tiny-llama")
    tunelab("migrate")
    tunelab("user", "create", "ada@example.com", "--password", "a long password", "--team", "research")
    headers = {"Authorization": f"Bearer {tunelab('token', 'create', 'ada@example.com')}"}

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [TUNELAB, "serve", "--port", str(port)], env=env, start_new_session=True, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def both_workers_up():
            try:
                return httpx.get(f"{url}/healthz", timeout=2).json()["workers"] == 3
            except httpx.HTTPError:
                return False

        wait_for(both_workers_up, timeout=90, interval=0.5, message="the app and its three workers")
        rows = [
            {"messages": [{"role": "user", "content": f"Colour {i}?"}, {"role": "assistant", "content": "Red."}]}
            for i in range(8)
        ]
        content = "".join(json.dumps(row) + "\n" for row in rows)
        dataset = httpx.post(f"{url}/api/datasets", headers=headers, files={"file": ("c.jsonl", content)}).json()
        spec = {"base_model": "tiny-llama", "method": "lora", "max_steps": 2, "logging_steps": 1}
        job = httpx.post(f"{url}/api/jobs", headers=headers, json={"dataset_id": dataset["id"], "spec": spec}).json()

        def finished():
            state = httpx.get(f"{url}/api/jobs/{job['id']}", headers=headers).json()["state"]
            return state if state in ("succeeded", "failed", "cancelled") else None

        assert wait_for(finished, timeout=180, interval=0.5, message="the job to finish") == "succeeded"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)

    output = log_path.read_text()
    assert output.count("-------------- celery@") == 1, output
    assert "SecurityWarning" not in output and "superuser privileges" not in output, output
    assert output.count("running as root") == (1 if os.geteuid() == 0 else 0), output
    assert "gemm_4bit" not in output and "kernels-community" not in output, output
    assert "it/s]" not in output and "Loading weights" not in output, output

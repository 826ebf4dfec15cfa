"""The lines the codebase holds: the web app never loads the ML stack, the training
library knows nothing of Celery or the database (import-linter contracts in pyproject)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is part of the test extras"
    result = subprocess.run(
        [lint_imports, "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_web_app_starts_without_loading_torch(tmp_path):
    code = (
        "import sys, time; t = time.perf_counter(); import app.main; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'bitsandbytes') if m in sys.modules); "
        "print(heavy, round(time.perf_counter() - t, 3))"
    )
    env = dict(os.environ, TUNELAB_DATA_DIR=str(tmp_path))
    timings = []
    for _ in range(5):  # the best of five: other work on the machine only ever adds time
        result = subprocess.run(
            [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        heavy, import_seconds = result.stdout.rsplit(" ", 1)
        assert heavy == "[]"
        timings.append(float(import_seconds))
    assert min(timings) < 1.0, f"importing the app took {timings} s"


@pytest.mark.parametrize(
    "compose_env, ok", [({"POSTGRES_PASSWORD": "x", "TUNELAB_SECRET_KEY": "y" * 40}, True), ({}, False)]
)
def test_compose_file_is_valid_and_has_no_secret_baked_in(compose_env, ok):
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian's package) checks the compose file; .ci/run installs it"
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "TUNELAB_SECRET_KEY")}
    result = subprocess.run(
        [compose, "config", "-q"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, **compose_env},
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr

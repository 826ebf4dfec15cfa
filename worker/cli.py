"""The `tunelab` command.

It lives beside the worker, not in `app/`, because `models make-tiny` and `worker` need the
ML stack, which the web app must never import. Every command imports what it needs when it
runs, so `tunelab serve` on an app-only install starts without torch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import click

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _require_database() -> None:
    """Commands that read accounts need a database that exists and is migrated: say so in one
    line, without creating an empty embedded database on the way (`get_engine` would)."""
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from app.config import get_settings
    from app.core import migrations

    url = get_settings().sqlalchemy_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        _fail(
            f"no tunelab database at {url.removeprefix('sqlite:///')}: run this where `tunelab serve` runs "
            "(or set TUNELAB_DATA_DIR / TUNELAB_DATABASE_URL), or create it with `tunelab migrate`"
        )
    try:
        up_to_date = migrations.is_up_to_date()
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        _fail(f"cannot open the database: {reason}")
    if not up_to_date:
        _fail("the database schema is not up to date: run `tunelab migrate` first")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """tunelab: fine-tune language models from a web dashboard."""


@main.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    from app.core import migrations

    migrations.upgrade()
    click.echo(f"database at revision {migrations.current_revision()}")


# Celery warns when its worker runs as root; `_say_if_root` says so once for all the workers
# tunelab starts, which then leave that warning out.
_ROOT_WARNING = "You're running the worker with superuser privileges"


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _say_if_root() -> None:
    if _running_as_root():
        click.secho(
            "warning: running as root: every job runs with full privileges on this machine; run tunelab "
            "as an unprivileged user (the Docker images do)",
            fg="yellow",
            err=True,
        )


def _worker_command(queues: str, concurrency: int | None = None, *, banner: bool = True, devices: int = 1) -> list[str]:
    """The Celery worker for `queues`. A worker that only answers chat keeps its process, and
    so its loaded models; any other replaces its process after every task, which returns all
    of a training job's memory. `banner=False` leaves out Celery's start-up banner (one is enough
    when a command starts several workers). A training worker that owns several `devices` also
    takes the jobs of its queues that need up to that many, and joins the multi-node jobs whose nodes
    need up to that many (`app.core.queue.worker_queues`)."""
    from app.config import get_settings
    from app.core.queue import worker_queues

    settings = get_settings()
    # Chat and webhook workers keep their processes; a training worker's is replaced after every job.
    recycle = not set(queues.split(",")) <= {settings.inference_queue, settings.webhooks_queue}
    if recycle:
        queues = ",".join(name for queue in queues.split(",") for name in worker_queues(queue, devices))
    if concurrency is None:  # webhook deliveries mostly wait on other servers: a few at a time
        concurrency = 4 if queues == settings.webhooks_queue else 1
    return [
        sys.executable,
        *(["-W", f"ignore:{_ROOT_WARNING}"] if _running_as_root() else []),
        "-m",
        "celery",
        *([] if banner else ["--quiet"]),
        "-A",
        "worker.celery_app",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--queues",
        queues,
        "--hostname",
        f"tunelab-%h-{os.getpid()}-{int(time.time())}-{queues.replace(',', '+')}",
        *(["--max-tasks-per-child", "1"] if recycle else []),
    ]


def _ml_stack_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "peft"))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--worker/--no-worker",
    default=True,
    show_default=True,
    help="Also start a training worker, an inference worker (for chat) and a webhook worker.",
)
@click.option(
    "--migrate/--no-migrate",
    "run_migrations",
    default=True,
    show_default=True,
    help="Upgrade the database schema first.",
)
def serve(host: str, port: int, worker: bool, run_migrations: bool) -> None:
    """Run the dashboard, and beside it a training worker and an inference worker (which
    answers chat at once, even while a job trains).

    With no settings this is the embedded mode: SQLite and a SQLite-backed broker under
    ./data, no other service. TUNELAB_DATABASE_URL, TUNELAB_BROKER_URL and TUNELAB_REDIS_URL
    point the same command at Postgres and Redis.
    """
    import uvicorn

    from app.accounts.users import user_count
    from app.config import get_settings
    from app.core import migrations
    from app.core.database import session_scope

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.models_path.mkdir(parents=True, exist_ok=True)
    if run_migrations:
        migrations.upgrade()
    elif not migrations.is_up_to_date():
        _fail("the database schema is not up to date: run `tunelab migrate` first")

    worker_processes = []
    if worker:
        if _ml_stack_installed():
            _say_if_root()
            worker_processes = [
                subprocess.Popen(_worker_command(queues, banner=queues == "default"), start_new_session=True)
                for queues in ("default", settings.inference_queue)
            ]
            # Webhook deliveries wait on other servers: a worker of their own, a few at a time.
            worker_processes.append(
                subprocess.Popen(_worker_command(settings.webhooks_queue, banner=False), start_new_session=True)
            )
        else:
            click.secho(
                "the ML stack (torch, transformers, peft) is not installed: starting without a worker; "
                "install with `pip install -e '.[worker]'`",
                fg="yellow",
                err=True,
            )

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    with session_scope() as session:
        first_run = user_count(session) == 0
    click.secho(f"tunelab is running at {url}", fg="green", bold=True)
    click.echo(f"  data: {settings.data_dir}   models: {settings.models_path}")
    if first_run:
        click.echo(f"  first run: open {url}/setup to create the administrator")
    # uvicorn re-raises the signal that stopped it once it has shut down; exit through
    # `finally` for SIGTERM as Python already does for SIGINT, so the worker is stopped too.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    try:
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", proxy_headers=True)
    finally:
        running = [process for process in worker_processes if process.poll() is None]
        if running:
            # Warm shutdown: a job in training checkpoints at its next step and goes back to the queue.
            click.echo("stopping the workers (a running job checkpoints and is resumed at the next start)", err=True)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@main.command("worker")
@click.option(
    "--queues",
    default="default",
    show_default=True,
    help="Comma-separated queues to take jobs from; 'inference' (alone) answers chat instead, "
    "'webhooks' (alone, with --gpus none) delivers webhooks.",
)
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    help="'auto' (every visible GPU), 'none' (one CPU worker), or a list like '0,1'.",
)
@click.option(
    "--gpus-per-worker",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="GPUs each worker owns: it takes jobs needing up to that many, one job at a time.",
)
@click.option(
    "--cpu-processes",
    default=None,
    type=click.IntRange(1, 64),
    help="No GPU: one worker that owns this many CPU processes (gloo) and takes jobs needing up to that many.",
)
def worker_command(queues: str, gpus: str, gpus_per_worker: int, cpu_processes: int | None) -> None:
    """Run workers: one worker process per GPU (or per --gpus-per-worker GPUs), each taking one
    job at a time. With `--queues inference` they answer chat requests, keeping the models they
    load; with `--queues webhooks --gpus none` one process delivers webhooks, four at a time."""
    if cpu_processes is not None:
        gpus = "none"
    devices = _gpu_list(gpus)
    if len(devices) % gpus_per_worker:
        _fail(f"--gpus-per-worker {gpus_per_worker} does not divide the {len(devices)} GPUs ({', '.join(devices)})")
    _say_if_root()
    commands = []
    groups = [",".join(devices[i : i + gpus_per_worker]) for i in range(0, len(devices), gpus_per_worker)]
    owned = gpus_per_worker if devices else (cpu_processes or 1)
    for device in groups or [None]:
        env = dict(os.environ)
        if device is None:
            env["TUNELAB_WORKER_CPU_PROCESSES"] = str(owned)
        else:
            env["CUDA_VISIBLE_DEVICES"] = device
            # The indices are nvidia-smi's (and NVML's), in PCI bus order; CUDA counts fastest
            # first unless told otherwise, which differs on a machine with mixed GPUs.
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        commands.append((device, env))
    if len(commands) == 1:
        os.execvpe(sys.executable, _worker_command(queues, devices=owned), commands[0][1])
    processes = [
        subprocess.Popen(_worker_command(queues, banner=index == 0, devices=owned), env=env)
        for index, (_device, env) in enumerate(commands)
    ]
    click.echo(f"started {len(processes)} workers on GPUs {', '.join(d for d, _ in commands)}")

    def stop(signum, _frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [process.wait() for process in processes]
    sys.exit(max(codes))


def _gpu_list(gpus: str) -> list[str]:
    if gpus == "none":
        return []
    if gpus != "auto":
        devices = [d.strip() for d in gpus.split(",") if d.strip()]
        if not all(d.isdigit() for d in devices):
            _fail("--gpus takes 'auto', 'none' or GPU indices like '0,1'")
        return devices
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


@main.group()
def user() -> None:
    """Manage users."""


@user.command("create")
@click.argument("email")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The new user's password (asked for when not given).",
)
@click.option("--team", required=True, help="Team the user joins; created (with them as owner) if it does not exist.")
@click.option("--role", type=click.Choice(["owner", "member", "viewer"]), default="member", show_default=True)
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
def user_create(email: str, password: str, team: str, role: str, admin: bool) -> None:
    """Create a user in a team."""
    from app.accounts.teams import find_team
    from app.accounts.users import create_user
    from app.core.database import session_scope
    from app.core.errors import AccountError
    from app.core.tables import Role

    _require_database()
    try:
        with session_scope() as session:
            new_team = find_team(session, team) is None
            created = create_user(
                session,
                email=email,
                password=password,
                team_name=team,
                role=Role(role),
                is_admin=admin,
                create_team_if_missing=True,
            )
            email = created.email
    except AccountError as error:
        _fail(error.message)
    if new_team:
        click.echo(f"created team {team.strip()!r} with {email} as its owner", err=True)
    click.echo(f"created user {email}" + (" (administrator)" if admin else ""), err=True)


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.argument("email")
@click.option("--name", default="cli", show_default=True, help="A name to recognise the token by.")
@click.option("--expires-in-days", type=int, default=None, help="Expire the token after this many days.")
@click.option("--team", default=None, help="Bind the token to this team (one of the user's): it works there only.")
def token_create(email: str, name: str, expires_in_days: int | None, team: str | None) -> None:
    """Create an API token for a user and print it (alone, on stdout). It is not shown again."""
    from app.accounts.teams import find_team
    from app.accounts.tokens import create_api_token
    from app.accounts.users import find_user
    from app.core.database import session_scope
    from app.core.errors import AccountError

    _require_database()
    try:
        with session_scope() as session:
            found = find_user(session, email)
            if found is None:
                _fail(f"no user with email {email.strip().lower()}")
            bound = find_team(session, team) if team is not None else None
            if team is not None and bound is None:
                _fail(f"no team named {team.strip()!r}")
            _row, secret = create_api_token(session, user=found, name=name, expires_in_days=expires_in_days, team=bound)
    except AccountError as error:
        _fail(error.message)
    click.echo(secret)


@main.group()
def models() -> None:
    """Manage the local base models (MODELS_DIR)."""


@models.command("make-tiny")
@click.argument("name")
@click.option("--arch", default="llama", show_default=True, help="Architecture of the tiny model.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Replace an existing model of that name.")
def models_make_tiny(name: str, arch: str, seed: int, force: bool) -> None:
    """Write a tiny causal LM (random weights, a tokenizer trained on the spot) into
    MODELS_DIR/NAME, to try tunelab end to end on a CPU without downloading anything."""
    from app.config import get_settings

    if not _MODEL_NAME.fullmatch(name):
        _fail("model names are letters, digits, '.', '_' and '-' (no slashes)")
    if not _ml_stack_installed():
        _fail("the ML stack is not installed: pip install -e '.[worker]'")
    from worker.ml.tiny import make_tiny_model

    target = get_settings().models_path / name
    if target.exists() and not force:
        _fail(f"{target} exists already (use --force to replace it)")
    make_tiny_model(target, arch=arch, seed=seed)
    click.echo(f"wrote {arch} model {name!r} to {target}")


@models.command("list")
def models_list() -> None:
    """List the base models found in MODELS_DIR."""
    from app.chat.catalog import list_local_models

    found = list_local_models()
    if not found:
        click.echo("no models yet: `tunelab models make-tiny tiny-llama` writes one to try", err=True)
    for model in found:
        click.echo(f"{model.name}\t{model.architecture}\t{model.parameters_human}")


if __name__ == "__main__":
    main()

"""The `instructloop` command."""

import signal
import subprocess
import sys
from pathlib import Path

import click

from app.config import Settings
from app.db import make_engine, read_session, write_session


def _writing(settings: Settings):
    """A command's transaction (committed at the end of its block), as the worker writes."""
    return write_session(make_engine(settings.db_url))


def _reading(settings: Settings):
    return read_session(make_engine(settings.db_url))


@click.group()
def main() -> None:
    """instructloop: label, train SFT / reward / PPO, and label again."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Web server processes.")
@click.option("--with-worker/--no-worker", default=False, help="Also start one training worker beside the web app.")
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Upgrade the database first (default: only for the embedded SQLite database).",
)
def serve(host: str, port: int, workers: int, with_worker: bool, migrate: bool | None) -> None:
    """Serve the web app."""
    import uvicorn

    from app import migrate as migrations

    settings = Settings()
    if migrate or (migrate is None and settings.is_sqlite):
        migrations.upgrade(settings.db_url)
    _ensure_first_admin(settings, host, port)
    worker = _start_worker() if with_worker else None
    # uvicorn catches SIGTERM (kill, systemd, docker stop), shuts down, then raises it again; with
    # the default handler that ended this process before the `finally` below stopped the worker.
    # Exiting through Python instead runs it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            "app.main:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
            **proxy_options(settings),
        )
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)


def _start_worker() -> subprocess.Popen:
    """The worker beside the web app; on Linux it also gets SIGTERM if this process dies without
    stopping it (SIGKILL, a crash), so a worker never outlives its server."""
    return subprocess.Popen(
        [sys.executable, "-m", "instructloop", "worker"],
        preexec_fn=_terminate_with_parent if sys.platform == "linux" else None,
    )


def _terminate_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def proxy_options(settings: Settings) -> dict:
    """uvicorn's proxy headers follow INSTRUCTLOOP_TRUSTED_PROXIES (app.deps.client_ip): its defaults
    believe X-Forwarded-For from 127.0.0.1 (or $FORWARDED_ALLOW_IPS) and would rewrite the client
    address, and so the access log's, before the app sees the request."""
    proxies = [item.strip() for item in settings.trusted_proxies.split(",") if item.strip()]
    if not proxies:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": proxies}


def _ensure_first_admin(settings: Settings, host: str, port: int) -> None:
    from app.services import accounts

    with _writing(settings) as session:
        created = accounts.ensure_first_admin(session, settings.admin_email, settings.admin_password)
    if created is None:
        return
    user, generated = created
    click.secho("\nFirst start: created the admin account.", fg="green", bold=True)
    click.echo(f"  Open    http://{host}:{port}/login")
    click.echo(f"  Email   {user.email}")
    if generated:
        click.echo(
            f"  Password {generated}   (shown only this once; set INSTRUCTLOOP_ADMIN_PASSWORD to choose your own)"
        )
    else:
        click.echo("  Password from INSTRUCTLOOP_ADMIN_PASSWORD")
    click.echo()


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Upgrade the database to REVISION (default: the newest)."""
    from app import migrate as migrations

    settings = Settings()
    migrations.upgrade(settings.db_url, revision)
    click.echo(f"Database at {revision}: {_redacted(settings.db_url)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Downgrade the database to REVISION ('base' drops every table)."""
    from app import migrate as migrations

    settings = Settings()
    migrations.downgrade(settings.db_url, revision)
    click.echo(f"Database at {revision}: {_redacted(settings.db_url)}")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def users() -> None:
    """User accounts."""


@users.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["labeler", "admin"]), default="labeler", show_default=True)
@click.option("--name", default="")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
def users_create(email: str, role: str, name: str, password_stdin: bool) -> None:
    """Create a user. The password is read from stdin or a prompt, never from an argument."""
    from app.models import Role
    from app.services import ServiceError, accounts

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    settings = Settings()
    try:
        with _writing(settings) as session:
            user = accounts.create_user(session, email, password, role=Role(role), name=name)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"Created {user.role.value} {user.email} (id {user.id}).")


@main.command()
@click.option("--once", is_flag=True, help="Run one queued run (if any) and exit.")
@click.option(
    "--poll-interval",
    default=2.0,
    show_default=True,
    type=float,
    help="Seconds between looks at the queue when it is empty.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Torch device for training (auto: cuda when available, else cpu).",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Train each SFT, reward and PPO run on this many processes (one per GPU; on a machine without "
    "GPUs, CPU processes), started through accelerate launch. Only process 0 talks to the database.",
)
@click.option(
    "--low-memory",
    is_flag=True,
    help="Hold the C library's mmap threshold at 1 MiB: large freed blocks go back to the system at once "
    "(with the 'CPU small memory' preset a 135M PPO run peaks near 2.4 GiB instead of 3.6) for 16-46% "
    "more time.",
)
def worker(once: bool, poll_interval: float, device: str, processes: int, low_memory: bool) -> None:
    """Run the training worker: claim queued runs and run them (SIGTERM stops it at a safe point)."""
    import logging
    import os

    if processes > 1 and "LOCAL_RANK" not in os.environ:  # not yet launched: start the team
        launch = team_launch_command(processes)
        worker_args = ["--poll-interval", str(poll_interval), "--device", device] + ["--once"] * once
        worker_args += ["--low-memory"] * low_memory
        os.execv(launch[0], [*launch, "-m", "instructloop", "worker", *worker_args])

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.context import hold_mmap_threshold
    from worker.worker import main as worker_main  # torch is imported here, never by the web app

    if low_memory and not hold_mmap_threshold():
        raise click.ClickException("--low-memory needs glibc's mallopt, which this C library does not have.")

    if poll_interval <= 0:
        raise click.BadParameter("must be above 0", param_hint="--poll-interval")
    handled = worker_main(
        Settings(), once=once, poll_interval=poll_interval, device=None if device == "auto" else device
    )
    click.echo(f"Worker stopped after {handled} run{'s' * (handled != 1)}.")


TEAM_RESTARTS = 3
"""How many times accelerate launch starts a worker team again after one of its processes failed."""


def team_launch_command(processes: int) -> list[str]:
    """`accelerate launch` for `processes` processes on this machine (several machines: see the
    README). --multi_gpu starts them through torchrun: one per GPU, or gloo processes on the CPU."""
    import socket

    with socket.socket() as sock:  # a rendezvous port of its own (29500 may be another team's)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        port,
        "--max_restarts",
        str(TEAM_RESTARTS),
        "--mixed_precision",
        "no",  # each run sets its own precision
        "--dynamo_backend",
        "no",
    ]


@main.command()
@click.option("--project", "project_ref", required=True, help="Project name or id.")
@click.option("--labelers", default=3, show_default=True, type=int)
@click.option(
    "--agreement",
    default=0.73,
    show_default=True,
    type=float,
    help="Pairwise agreement between two simulated labelers (0.5 = chance).",
)
@click.option("--kinds", default="demonstration,ranking,comparison", show_default=True)
@click.option(
    "--demos-file",
    type=click.Path(exists=True, dir_okay=False),
    help="JSONL with prompt/completion or Alpaca instruction/input/output; else the prompts' references.",
)
@click.option(
    "--padding-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Share of demonstrations that wrap the answer in chatty filler, ignoring length limits.",
)
@click.option("--max-tasks", type=int, default=None)
@click.option("--seed", default=0, show_default=True, type=int)
def simulate(
    project_ref: str,
    labelers: int,
    agreement: float,
    kinds: str,
    demos_file: str | None,
    padding_rate: float,
    max_tasks: int | None,
    seed: int,
) -> None:
    """Let simulated labelers with a known preference work a project's queues."""
    from pathlib import Path

    from app.models import TaskKind
    from app.services import ServiceError, projects
    from worker import simulate as sim

    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        kind_list = [TaskKind(k.strip()) for k in kinds.split(",") if k.strip()]
        sim.noise_for_agreement(agreement)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        with read_session(engine) as session:
            project_id = projects.project_by_name_or_id(session, project_ref).id
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    demos = sim.load_demonstrations(Path(demos_file)) if demos_file else {}
    report = sim.simulate(
        engine,
        project_id,
        labelers=labelers,
        agreement=agreement,
        kinds=kind_list,
        demos=demos,
        padding_rate=padding_rate,
        default_lease_seconds=settings.lease_seconds,
        seed=seed,
        max_tasks=max_tasks,
    )
    for kind, n in report.submitted.items():
        click.echo(f"{kind}: {n} submitted")
    click.echo(f"skipped: {report.skipped}")
    for error in report.errors[:10]:
        click.echo(f"  {error}", err=True)


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--project", "project_ref", required=True, help="Project name or id.")
@click.option(
    "--format",
    "fmt",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "jsonl", "messages", "csv", "hh-rlhf", "alpaca", "oasst", "preferences"]),
)
@click.option("--prompts-only", is_flag=True, help="Leave the file's feedback (comparisons, rankings, answers) out.")
@click.option(
    "--answers-as-demonstrations",
    is_flag=True,
    help="Reference answers (Alpaca, GSM8K, OpenAssistant) become imported demonstrations too.",
)
@click.option("--valid", "valid_pct", default=10.0, show_default=True, help="Validation share, percent.")
@click.option("--test", "test_pct", default=10.0, show_default=True, help="Test share, percent.")
@click.option("--create-tasks", is_flag=True, help="Create a demonstration task for each train prompt.")
@click.option("--dry-run", is_flag=True, help="Only show the preview; write nothing.")
def import_prompts(
    file: str,
    project_ref: str,
    fmt: str,
    prompts_only: bool,
    answers_as_demonstrations: bool,
    valid_pct: float,
    test_pct: float,
    create_tasks: bool,
    dry_run: bool,
) -> None:
    """Import prompts and their feedback from FILE (JSONL, CSV, hh-rlhf, preferences, Alpaca,
    OpenAssistant; .gz ok): all or nothing. Feedback is stored without a labeler (imported)."""
    from app.services import ServiceError, imports, projects

    with click.open_file(file, "rb") as f:
        data = f.read(imports.CLI_MAX_IMPORT_BYTES + 1)
    name = "stdin" if file == "-" else file.rsplit("/", 1)[-1]
    try:
        with _writing(Settings()) as session:
            project = projects.project_by_name_or_id(session, project_ref)
            valid, test, limit = valid_pct / 100, test_pct / 100, imports.CLI_MAX_IMPORT_BYTES
            preview = imports.preview_import(
                session,
                project,
                data,
                filename=name,
                fmt=fmt,
                valid_fraction=valid,
                test_fraction=test,
                max_bytes=limit,
                feedback=not prompts_only,
                answers_as_demonstrations=answers_as_demonstrations,
            )
            click.echo(
                f"{name}: {len(preview.records):,} new prompts {preview.split_counts}, "
                f"{len(preview.duplicates):,} duplicates in the file, {len(preview.existing):,} already in "
                f"“{project.name}”, {len(preview.errors):,} bad lines."
            )
            if preview.take_feedback:
                click.echo(
                    f"Feedback (imported, no labeler): {imports.feedback_summary(preview.feedback_counts) or 'none'}"
                    f"; {len(preview.identical_pairs):,} identical pairs (no comparison)"
                    f", {preview.feedback_already:,} already imported."
                )
            if preview.errors:
                raise click.ClickException(f"Nothing imported.\n{preview.error_report()}")
            if dry_run:
                return
            result = imports.commit(session, project, preview, source=name, create_tasks=create_tasks)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"Imported {len(result.prompts):,} prompts"
        + (f" and created {result.tasks_created:,} demonstration tasks." if create_tasks else ".")
        + (f" Feedback: {imports.feedback_summary(result.feedback)}." if result.feedback else "")
    )


@main.command("export")
@click.argument("kind", type=click.Choice(["sft", "preferences", "rankings"]))
@click.option("--project", "project_ref", required=True, help="Project name or id.")
@click.option(
    "--split",
    "splits",
    multiple=True,
    type=click.Choice(["train", "valid", "test"]),
    help="Only these splits (repeat the option); default train (valid and test are for evaluation).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["plain", "conversational"]),
    default="plain",
    show_default=True,
    help="conversational: chat messages, so TRL applies the model's chat template.",
)
@click.option("--exclude-labeler", "exclude", multiple=True, type=int, help="Leave out this labeler id (repeatable).")
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Output file.",
)
def export_data(
    kind: str, project_ref: str, splits: tuple[str, ...], fmt: str, exclude: tuple[int, ...], output: str
) -> None:
    """Export KIND as JSON Lines: sft (prompt/completion), preferences (prompt/chosen/rejected), rankings."""
    from app.services import ServiceError, exports, projects

    try:
        with _reading(Settings()) as session:
            project = projects.project_by_name_or_id(session, project_ref)
            f = exports.ExportFilter(project.id, list(splits), list(exclude), fmt)
            exports.check(session, kind, f)
            n = 0
            with click.open_file(output, "w", encoding="utf-8") as out:
                for line in exports.jsonl_lines(session, kind, f):
                    out.write(line)
                    n += 1
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    if output != "-":
        click.echo(f"Wrote {n:,} rows to {output}.", err=True)


@main.command()
@click.option(
    "--profile",
    type=click.Choice(["cpu", "gpu", "tiny", "hh"]),
    default="cpu",
    show_default=True,
    help="cpu: minutes on a laptop; gpu: real sizes; tiny: a tiny model, for a quick look; "
    "hh: public human feedback (hh-rlhf, OpenAssistant) judged by a gold reward model.",
)
@click.option("--gpu", "gpu_flag", is_flag=True, help="GPU sizes: same as --profile gpu, or hh's GPU size with hh.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--data",
    "data_folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The hh profile's data folder (hh-rlhf/, oasst-en-100/); default ../shared/data beside the checkout.",
)
@click.option(
    "--worker/--no-worker",
    "start_worker",
    default=True,
    help="Start a worker for the demo (turn off when `instructloop worker` already runs).",
)
def demo(profile: str, gpu_flag: bool, seed: int, data_folder: Path | None, start_worker: bool) -> None:
    """Run the whole loop with simulated labelers (or, with --profile hh, on public human feedback):
    SFT, rankings, reward model, PPO, evaluation."""
    from app import migrate as migrations
    from app.services import ServiceError
    from worker import gold
    from worker.demo import run_demo

    if gpu_flag:
        profile = "hh-gpu" if profile == "hh" else "gpu"
    if profile.startswith("hh"):
        try:  # before touching the database: say at once what is missing
            gold.check_data_folder(data_folder or gold.default_data_folder())
        except gold.DataFolderMissing as exc:
            raise click.ClickException(str(exc)) from exc
    settings = Settings()
    if settings.is_sqlite:
        migrations.upgrade(settings.db_url)
    try:
        run_demo(settings, profile, echo=click.echo, seed=seed, start_worker=start_worker, data=data_folder)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from exc
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()

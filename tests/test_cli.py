"""The `instructloop` command: users create reads the password from stdin, never an argument."""

from click.testing import CliRunner
from sqlalchemy import select

from app.models import Role, User
from app.security import verify_password
from instructloop.cli import main


def _env(settings):
    return {"DATABASE_URL": settings.db_url, "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir), "SECRET_KEY": "k"}


def test_db_upgrade_and_users_create(settings, session):
    runner = CliRunner()
    r = runner.invoke(main, ["db", "upgrade"], env=_env(settings))
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main,
        ["users", "create", "Boss@Example.com", "--role", "admin", "--password-stdin"],
        input="a strong password\n",
        env=_env(settings),
    )
    assert r.exit_code == 0, r.output
    assert "Created admin boss@example.com" in r.output
    user = session.scalar(select(User).where(User.email == "boss@example.com"))
    assert user.role is Role.admin and verify_password(user.password_hash, "a strong password")


def test_users_create_prompts_and_refuses_bad_input(settings):
    runner = CliRunner()
    r = runner.invoke(
        main, ["users", "create", "a@example.com"], input="a strong password\na strong password\n", env=_env(settings)
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        main, ["users", "create", "a@example.com", "--password-stdin"], input="another password\n", env=_env(settings)
    )
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(
        main, ["users", "create", "b@example.com", "--password-stdin"], input="short\n", env=_env(settings)
    )
    assert r.exit_code == 1 and "at least 10" in r.output
    r = runner.invoke(
        main, ["users", "create", "not-an-email", "--password-stdin"], input="a strong password\n", env=_env(settings)
    )
    assert r.exit_code == 1 and "not an email" in r.output


def test_no_password_argument_exists():
    r = CliRunner().invoke(main, ["users", "create", "a@example.com", "--password", "x"])
    assert r.exit_code == 2 and "No such option" in r.output


def test_first_admin_created_once(settings, capsys):
    from instructloop.cli import _ensure_first_admin

    settings.admin_password = ""
    _ensure_first_admin(settings, "127.0.0.1", 8000)
    _ensure_first_admin(settings, "127.0.0.1", 8000)
    out = capsys.readouterr().out
    assert out.count("created the admin account") == 1 and "Password " in out


def _serve(tmp_path, *options: str, output=None):
    """`instructloop serve` on a fresh data folder (SQLite), answering on a free port: (process, port)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(INSTRUCTLOOP_DATA_DIR=str(tmp_path), INSTRUCTLOOP_ADMIN_PASSWORD="a strong password")
    server = subprocess.Popen(
        [sys.executable, "-m", "instructloop", "serve", "--port", str(port), *options],
        env=env,
        stdout=output if output is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                break
        except OSError:
            time.sleep(0.3)
    return server, port


def test_serve_starts_on_the_embedded_database(tmp_path):
    # The README's first command: a fresh data folder, SQLite migrated, the first admin created, and
    # the app (its served factory, app.main.create_served_app) answering.
    import subprocess
    import urllib.request

    server, port = _serve(tmp_path, output=subprocess.PIPE)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            status = r.status
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as r:
            assert r.status == 200 and b'name="password"' in r.read()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert status == 200, output
    assert "created the admin account" in output and (tmp_path / "instructloop.db").exists()


def test_sigterm_to_serve_stops_its_worker(tmp_path):
    # What kill, systemd and `docker stop` send: the server's worker must not outlive it (issue 28:
    # uvicorn re-raised the signal before the server's `finally` stopped the worker, which stayed
    # behind, holding its memory, and the next `make run` started a second one).
    import signal
    import time
    from pathlib import Path

    server, _ = _serve(tmp_path, "--with-worker")

    def children() -> list[int]:
        found = []
        for task in Path(f"/proc/{server.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    try:
        (worker,) = children()
        assert b"worker" in Path(f"/proc/{worker}/cmdline").read_bytes()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=90) != 0
    finally:
        if server.poll() is None:
            server.kill()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    state = Path(f"/proc/{worker}/stat").read_text().split()[2] if Path(f"/proc/{worker}").exists() else "gone"
    assert state in ("gone", "Z"), f"the worker {worker} outlived its server ({state})"

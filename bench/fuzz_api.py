"""Schemathesis against the JSON API, as an admin and as a labeler, on a real uvicorn server on
loopback: every generated request must get an answer other than a 5xx.

    make fuzz                                        # Postgres scratch database, 10,000 cases per token
    .venv/bin/python bench/fuzz_api.py --max-examples 50 --db-url sqlite:////tmp/fuzz.db

Schemathesis lives in its own environment (bench/.venv-fuzz, made by `make fuzz`): it pins its
own versions of libraries the project also uses. The database named in --db-url is emptied and
migrated first (use a scratch one). The server is seeded with a project, prompts, demonstration,
ranking and comparison tasks, a finished run and model versions, so ids in the schema's examples
often exist. Printed: test cases generated and server errors per token, and the failing operations.
Bounded: --max-examples per operation and phase, and --max-time per token."""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Base, Role  # noqa: E402
from app.services import accounts  # noqa: E402
from tests.labeling import comparison_setup, demo_setup, make_outputs, make_prompts  # noqa: E402

SCHEMATHESIS = ROOT / "bench" / ".venv-fuzz" / "bin" / "schemathesis"


def reset(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        else:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    upgrade(url)


def seed(url: str) -> tuple[str, str]:
    """Tokens of an admin and a labeler; some data for the ids to hit."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        admin = accounts.create_user(session, "admin@fuzz.invalid", None, role=Role.admin)
        labeler = accounts.create_user(session, "labeler@fuzz.invalid", None, role=Role.labeler)
        project, _ = demo_setup(session, n_prompts=20, name="Fuzz")
        more = make_prompts(session, project, ["Rank these", "Compare these"])
        make_outputs(session, more[0], ["A", "B", "C", "D"])
        comparison_setup(session, name="Fuzz comparisons")
        tokens = accounts.create_api_token(session, admin), accounts.create_api_token(session, labeler)
        session.commit()
    engine.dispose()
    return tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fuzz(
    base: str, token: str, who: str, max_examples: int, max_time: int, workers: int, cwd: Path
) -> tuple[int, int, str]:
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "-H",
        f"Authorization: Bearer {token}",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(max_examples),
        "--max-time",
        str(max_time),
        "--workers",
        str(workers),
        "--continue-on-failure",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    started = time.monotonic()
    # cwd: schemathesis writes its cache (.schemathesis/) there, not into the working tree.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 600, cwd=cwd).stdout
    seconds = time.monotonic() - started
    generated = sum(int(n) for n in re.findall(r"(\d+) generated", out)) or sum(
        int(n) for n in re.findall(r"Test cases:\s*(\d+)", out)
    )
    errors = len(re.findall(r"Server error", out))
    print(f"{who}: {generated} test cases in {seconds:.0f} s, {errors} server-error findings")
    return generated, errors, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--db-url",
        default=os.environ.get("FUZZ_DATABASE_URL", ""),
        help="scratch database (emptied); default: a temporary SQLite file",
    )
    parser.add_argument("--max-examples", type=int, default=300, help="cases per operation and phase")
    parser.add_argument("--max-time", type=int, default=900, help="seconds per token")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--show", action="store_true", help="print schemathesis' whole output")
    args = parser.parse_args()
    if not SCHEMATHESIS.exists():
        sys.exit(f"{SCHEMATHESIS} is missing: run `make fuzz` (it installs schemathesis there).")
    tmp = Path(tempfile.mkdtemp(prefix="il-fuzz-"))
    url = args.db_url or f"sqlite:///{tmp / 'fuzz.db'}"
    reset(url)
    admin_token, labeler_token = seed(url)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "INSTRUCTLOOP_DATA_DIR": str(tmp / "data"),
        "SECRET_KEY": "fuzz",
        "INSTRUCTLOOP_ADMIN_PASSWORD": "fuzz admin password 1",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "instructloop", "serve", "--port", str(port), "--no-migrate"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        total_cases = total_errors = 0
        for who, token in (("admin", admin_token), ("labeler", labeler_token)):
            cases, errors, out = fuzz(base, token, who, args.max_examples, args.max_time, args.workers, tmp)
            total_cases, total_errors = total_cases + cases, total_errors + errors
            if args.show or errors:
                print(out[-20000:])
        print(
            f"total: {total_cases} test cases, {total_errors} server-error findings (server log: {tmp / 'server.log'})"
        )
    finally:
        server.terminate()
        server.wait(10)
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()

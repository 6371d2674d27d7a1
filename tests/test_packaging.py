"""What a new user meets: the compose file is valid and the README shows the two commands."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compose_cmd():
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_is_valid():
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "SECRET_KEY": "test"}
    r = subprocess.run([*cmd, "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for service in ("postgres:", "web:", "worker:"):
        assert service in r.stdout
    assert "healthcheck" in r.stdout and "gpu" in r.stdout


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_environment_is_the_locked_one():
    """`make install`/`make dev` install with requirements.lock as constraints: what the tests run
    with is what the lock says (a dependency change needs `make lock`)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    drift = []
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            drift.append(f"{req.name}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            drift.append(f"{req.name}: {installed} installed, lock says {req.specifier}")
    assert drift == [], "run `make lock` or reinstall: " + "; ".join(drift)


def test_the_image_copies_every_package():
    """The Dockerfile copies each package pyproject installs (a new top-level package is easy to miss)."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = [name for name in (p.rstrip("*") for p in include) if f"COPY {name} ./{name}" not in dockerfile]
    assert missing == []

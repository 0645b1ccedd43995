#!/usr/bin/env python3
"""Set-up and everyday tasks with nothing but Python 3.11+ installed.

    python3 dev.py run    # virtualenv, dependencies, .env, migrations, a login; then serve
    python3 dev.py test   # the same set-up with the test tools; ruff, then pytest

Standard library only: it runs before any dependency is installed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
ENV_FILE = ROOT / ".env"
LOGIN_FILE = ROOT / "var" / "login.txt"
ADMIN_USER = "admin"


def sh(*args: str | Path, env: dict[str, str] | None = None) -> None:
    """Run a command, echoing it; stop with its exit code if it fails."""
    print("+", " ".join(str(a) for a in args), flush=True)
    completed = subprocess.run([str(a) for a in args], cwd=ROOT, env=env)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_venv(requirements: str) -> None:
    """Create .venv and install the pinned requirements, again only when they change."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    files = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt"]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    stamp = VENV / f".installed-{requirements}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    sh(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
       "-r", requirements)
    stamp.write_text(digest)


def ensure_env_file() -> None:
    """A local .env for development: DEBUG on and a secret key of its own."""
    if not ENV_FILE.exists():
        ENV_FILE.write_text(
            "# Local development settings (not committed). See README for all variables.\n"
            "DEBUG=true\n"
            f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        )
        print(f"wrote {ENV_FILE.name} (DEBUG=true, a new SECRET_KEY)")


def ensure_login() -> str:
    """A superuser for the admin, with a generated password kept in var/login.txt."""
    LOGIN_FILE.parent.mkdir(exist_ok=True)
    if not LOGIN_FILE.exists():
        LOGIN_FILE.write_text(secrets.token_urlsafe(12))
        LOGIN_FILE.chmod(0o600)
    password = LOGIN_FILE.read_text().strip()
    script = (
        "import os; from django.contrib.auth import get_user_model; U = get_user_model(); "
        f"u, _ = U.objects.get_or_create(username={ADMIN_USER!r}, "
        "defaults={'is_staff': True, 'is_superuser': True}); "
        "u.set_password(os.environ['ADMIN_PASSWORD']); u.save()"
    )
    # The password goes through the environment, not the echoed command line.
    sh(PYTHON, "manage.py", "shell", "--no-imports", "-c", script,
       env={**os.environ, "ADMIN_PASSWORD": password})
    return password


def run() -> None:
    ensure_venv("requirements.txt")
    ensure_env_file()
    sh(PYTHON, "manage.py", "migrate", "--verbosity", "0")
    password = ensure_login()
    print(
        "\nReady. Log in at http://127.0.0.1:8000/ as"
        f" {ADMIN_USER} / {password}  (kept in var/login.txt)\n"
        "The projections run beside the server (Ctrl-C stops both).\n"
        "In another terminal:  .venv/bin/python manage.py api -a create -v 100.00\n",
        flush=True,
    )
    # Same process group: the terminal's Ctrl-C reaches the runner too.
    subprocess.Popen([PYTHON, "manage.py", "run_projection", "all"], cwd=ROOT)
    os.execv(PYTHON, [str(PYTHON), "manage.py", "runserver", "127.0.0.1:8000"])


def test(pytest_args: list[str]) -> None:
    ensure_venv("requirements-dev.txt")
    sh(PYTHON, "-m", "ruff", "check", ".")
    # Tests never depend on a developer's .env; settings are read before any conftest.
    env = {**os.environ, "DEBUG": "true", "SECRET_KEY": "tests-only-not-a-secret"}
    sh(PYTHON, "-m", "pytest", *pytest_args, env=env)


def main() -> None:
    command, *rest = sys.argv[1:] or ["run"]
    if command == "run":
        run()
    elif command == "test":
        test(rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

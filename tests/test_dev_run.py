"""`python3 dev.py run`, the README's first command, as a newcomer meets it (issue 14).

It serves on the port asked for, says so when that port is taken and then starts
nothing, never leaves a projection runner behind, and keeps the login's password from
one start to the next. Each start runs a copy of dev.py in a folder of its own (its
.env and var/login.txt land there), on a database and event store of the test's own.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP = 120  # seconds: pip's check of the requirements, migrations, the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DevRun:
    """One `dev.py run` in its own process group (as a terminal would start it)."""

    def __init__(self, folder: Path, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(folder / "dev.py"), "run", *args], cwd=folder, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.output = ""

    def read_until(self, text: str) -> str:
        """The output up to the line holding `text`; fails if the process ends first."""
        deadline = time.monotonic() + STARTUP
        stream = self.process.stdout
        assert stream is not None
        while text not in self.output:
            ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
            line = stream.readline() if ready else ""
            if not line:
                pytest.fail(f"dev.py run never printed {text!r}:\n{self.output}")
            self.output += line
        return self.output

    def finish(self) -> tuple[int, str]:
        """Its exit code and whole output, once it has ended (within STARTUP)."""
        rest, _ = self.process.communicate(timeout=STARTUP)
        self.output += rest
        return self.process.returncode, self.output

    def left_running(self) -> list[str]:
        """The processes of its group still alive (the server, its reloader, the runner).

        A zombie is not one: it has exited, and only waits for a parent to collect it
        (one whose parent exited first waits for PID 1, which in a container may never).
        """
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # it ended while we looked
                continue
            state, _, group = text.rpartition(")")[2].split()[:3]
            if int(group) == self.process.pid and state != "Z":
                alive.append((stat.parent / "cmdline").read_text().replace("\0", " "))
        return alive

    def stop_everything(self) -> None:
        if self.left_running():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where dev.py is a copy and the rest of the project links to the checkout."""
    folder = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in {"dev.py", "var", ".env", ".git"}:
            (folder / entry.name).symlink_to(entry)
    shutil.copy(ROOT / "dev.py", folder / "dev.py")
    (folder / "var").mkdir()
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("data")
    return {**os.environ, "DEBUG": "true", "SECRET_KEY": "tests-only-not-a-secret",
            "DATABASE_URL": f"sqlite:///{data / 'db.sqlite3'}",
            "EVENTSTORE_URI": f"sqlite:///{data / 'events.sqlite3'}",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def start(project: Path, env: dict[str, str]) -> Iterator:
    runs: list[DevRun] = []

    def start(*args: str, **extra_env: str) -> DevRun:
        runs.append(DevRun(project, list(args), {**env, **extra_env}))
        return runs[-1]

    yield start
    for run in runs:
        run.stop_everything()


def password_hash(env: dict[str, str]) -> str:
    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (hashed,) = db.execute(
            "SELECT password FROM auth_user WHERE username = 'admin'").fetchone()
    return hashed


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def test_serves_on_the_port_given_and_ctrl_c_stops_server_and_runner(start) -> None:
    port = free_port()
    run = start("--port", str(port))
    assert f"Log in at http://127.0.0.1:{port}/ as admin / " in run.read_until("Ctrl-C")
    assert get(f"http://127.0.0.1:{port}/healthz") == 200
    run.read_until("following from position")  # the runner is up too
    os.killpg(run.process.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C
    code, output = run.finish()
    assert code == 0, output
    assert run.left_running() == []


def test_port_from_the_environment_a_second_start_keeps_the_password(start, env) -> None:
    first = start("--port", str(free_port()))
    login = first.read_until("Ctrl-C").split("as admin / ")[1].split()[0]
    os.killpg(first.process.pid, signal.SIGTERM)
    first.finish()
    assert first.left_running() == []
    hashed = password_hash(env)

    port = free_port()
    second = start(PORT=str(port))
    output = second.read_until("Ctrl-C")
    assert f"http://127.0.0.1:{port}/ as admin / {login} " in output
    assert password_hash(env) == hashed  # browsers stay logged in across restarts
    os.kill(second.process.pid, signal.SIGTERM)  # dev.py alone: it stops its children
    second.finish()
    assert second.left_running() == []


def test_a_busy_port_is_named_and_nothing_is_left_running(start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = start("--port", str(port))
        code, output = run.finish()
    assert code == 1
    assert f"Port {port} is in use" in output
    assert f"python3 dev.py run --port {port + 1}" in output
    assert "Ready." not in output
    assert run.left_running() == []


@pytest.mark.parametrize("args", [["--port", "eighty"], ["--port", "0"], ["--verbose"]])
def test_a_bad_argument_is_refused_before_anything_starts(start, args: list[str]) -> None:
    code, output = start(*args).finish()
    assert code == 1
    assert "dev.py run:" in output


def readme_block(after_heading: str) -> str:
    """The first ```sh block under a README heading, as a reader would copy it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(f"\n{after_heading}\n"):]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_the_readmes_api_lines_work_as_pasted_against_dev_py_run(start, project, env) -> None:
    """The README's REST API block, run line by line (bash -e) in a second terminal."""
    port = free_port()
    start("--port", str(port)).read_until("Ctrl-C")
    block = readme_block("## REST API")
    first, rest = block.split("\n", 1)
    assert first.startswith("SITE=http://127.0.0.1:8000 ")  # the only line we change
    script = f"set -euo pipefail\nSITE=http://127.0.0.1:{port}\n{rest}"
    done = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True,
                          text=True, timeout=STARTUP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status":"partially_settled"' in done.stdout.replace(" ", "")
    assert '"settled_amount":"40.00"' in done.stdout.replace(" ", "")

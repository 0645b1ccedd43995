#!/usr/bin/env python3
"""Set-up and everyday tasks with nothing but Python 3.11+ installed.

    python3 dev.py run [--port N]  # virtualenv, dependencies, .env, migrations, a login;
                                   # then serve (:8000, or $PORT) and run the projections
    python3 dev.py test   # the same set-up with the test tools; ruff, then pytest
    python3 dev.py mutate [files]  # mutation testing of the core (docs/TESTING.md)

`test` runs the whole suite on SQLite, then the read-model suites (projections,
runners, admin, API, pages) again on a throwaway PostgreSQL server it starts from
the installed binaries and removes afterwards. Without a server installed that run
is skipped (REQUIRE_POSTGRES=1, as in CI, makes that a failure).

Standard library only: it runs before any dependency is installed.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
ENV_FILE = ROOT / ".env"
LOGIN_FILE = ROOT / "var" / "login.txt"
ADMIN_USER = "admin"


def sh(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
    """Run a command, echoing it; stop with its exit code if it fails."""
    print("+", " ".join(str(a) for a in args), flush=True)
    completed = subprocess.run([str(a) for a in args], cwd=cwd, env=env)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_venv(requirements: str) -> None:
    """Create .venv and install the pinned requirements, again only when they change."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    # requirements-dev.txt includes bench/requirements.txt (tests/test_bench.py runs the
    # benchmarks): a change to any of them installs again.
    files = [ROOT / "requirements.txt", ROOT / "requirements-dev.txt",
             ROOT / "bench" / "requirements.txt"]
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
    """A superuser for the admin, its password generated once and kept in var/login.txt.

    Made once: a later start never sets the password again (that would log everybody
    out), and says so if the password was changed since var/login.txt was written.
    """
    LOGIN_FILE.parent.mkdir(exist_ok=True)
    if not LOGIN_FILE.exists():
        LOGIN_FILE.write_text(secrets.token_urlsafe(12))
        LOGIN_FILE.chmod(0o600)
    password = LOGIN_FILE.read_text().strip()
    script = (
        "import os; from django.contrib.auth import get_user_model; U = get_user_model(); "
        f"u, made = U.objects.get_or_create(username={ADMIN_USER!r}, "
        "defaults={'is_staff': True, 'is_superuser': True}); "
        "made and (u.set_password(os.environ['ADMIN_PASSWORD']), u.save()); "
        "print('made' if made else 'same' if u.check_password(os.environ['ADMIN_PASSWORD'])"
        " else 'changed')"
    )
    # The password goes through the environment, not the echoed command line.
    done = subprocess.run([PYTHON, "manage.py", "shell", "--no-imports", "-c", script],
                          cwd=ROOT, env={**os.environ, "ADMIN_PASSWORD": password},
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"could not make the login:\n{done.stdout}{done.stderr}")
    if done.stdout.strip() == "changed":
        return "(its password was changed since var/login.txt was written; to set one:" \
               f" .venv/bin/python manage.py changepassword {ADMIN_USER})"
    return password


def run_options(args: list[str]) -> int:
    """The port to serve on: `--port N` (or `--port=N`), else $PORT, else 8000."""
    port = os.environ.get("PORT", "8000")
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--port" and rest:
            port = rest.pop(0)
        elif arg.startswith("--port="):
            port = arg.split("=", 1)[1]
        else:
            sys.exit(f"dev.py run: unknown argument {arg!r} (it takes --port N)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        sys.exit(f"dev.py run: the port must be a number from 1 to 65535, not {port!r}")
    return int(port)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def run(args: list[str]) -> None:
    """Serve the site and run the projections beside it, until Ctrl-C or SIGTERM.

    dev.py stays as the parent of both: when the server stops (or cannot start: a port
    in use, say) it stops the runner, so no runner is left behind. A runner that stops
    on its own is reported, and the site goes on serving.
    """
    port = run_options(args)
    ensure_venv("requirements.txt")
    ensure_env_file()
    if not port_is_free(port):
        sys.exit(f"Port {port} is in use (another dev.py run?). Stop that one, or choose"
                 f" another port: python3 dev.py run --port {port + 1}")
    sh(PYTHON, "manage.py", "migrate", "--verbosity", "0")
    password = ensure_login()
    # One process group with the terminal: its Ctrl-C reaches the children as well.
    server = subprocess.Popen([PYTHON, "manage.py", "runserver", f"127.0.0.1:{port}"],
                              cwd=ROOT)
    children = [server]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Even when started with SIGINT ignored (in the background): Ctrl-C stops everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        deadline = time.monotonic() + 60
        while not answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"The server did not start on port {port} (see above).")
            time.sleep(0.1)
        children.append(subprocess.Popen([PYTHON, "manage.py", "run_projection", "all"],
                                         cwd=ROOT))
        print(
            f"\nReady. Log in at http://127.0.0.1:{port}/ as"
            f" {ADMIN_USER} / {password}  (kept in var/login.txt)\n"
            "The projections run beside the server (Ctrl-C stops both).\n"
            "In another terminal:  .venv/bin/python manage.py api -a create -v 100.00\n",
            flush=True,
        )
        runner = children[1]
        while server.poll() is None:
            if runner.returncode is None and runner.poll() is not None:
                # The site still serves: the overview and /readyz say why it stopped.
                print(f"\nThe projection runner stopped (exit {runner.returncode}): the lists"
                      " stop following new events; the overview says why. Restart"
                      " python3 dev.py run to start it again.", flush=True)
            time.sleep(0.2)
        sys.exit(f"The server stopped (exit {server.returncode}); stopping the runner.")
    except KeyboardInterrupt:
        pass
    finally:
        stop(children)


def stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM (they stop cleanly on it: the runner commits its batch), then SIGKILL."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


# The suites that touch the read-model database, run a second time on PostgreSQL.
POSTGRES_SUITES = [
    "tests/test_projections.py", "tests/test_runner.py", "tests/test_runner_faults.py",
    "tests/test_projection_status.py", "tests/test_admin.py", "tests/test_api_rest.py",
    "tests/test_api_command.py", "tests/test_pages.py", "tests/test_poisoned_log.py",
    "tests/test_runner_failures.py", "tests/test_history_pages.py", "tests/test_web_hardening.py",
    "tests/test_hostile_input.py", "tests/test_esdb_cluster.py",
    "tests/test_runner_foreign_traffic.py", "tests/test_rebuild.py", "tests/test_as_of.py",
    "tests/test_event_versions.py", "tests/test_metrics.py", "tests/test_read_your_writes.py",
    "tests/test_tracing.py", "tests/test_connections.py",
]
PG_USER = "payments"
PG_DATABASE = "paymentsite"


def postgres_bindir() -> Path | None:
    """Where the PostgreSQL server's programs are (pg_config's, else Debian's newest)."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))

    def major(path: str) -> int:
        number = Path(path).parent.name
        return int(number) if number.isdigit() else 0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major,
                                           reverse=True)]
    for folder in candidates:
        if all((folder / program).is_file() for program in ("postgres", "initdb", "pg_ctl")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(bindir: Path) -> Iterator[tuple[str, str]]:
    """A PostgreSQL server of its own in a temporary folder, on 127.0.0.1 and a free port.

    Yields (version, DATABASE_URL). Trust authentication on loopback, fsync off, C
    collation (text sorts byte-wise, as on SQLite); stopped and deleted afterwards.
    initdb refuses to run as root, so as root the server runs as the postgres user.
    """
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="paymentsite-pg-"))
    if os.geteuid() == 0:
        import pwd  # Unix only, like the server itself

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = pwd.getpwnam("nobody")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", owner.pw_name, "--"] if shutil.which("runuser") else [
            "setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups"]
    data = folder / "data"
    version = subprocess.run([bindir / "postgres", "--version"], capture_output=True,
                             text=True).stdout
    major = re.search(r"\(PostgreSQL\) (\d+)", version)
    port = free_port()

    def run(*args: str | Path) -> None:
        done = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True,
                              cwd=folder)
        if done.returncode != 0:
            log = folder / "server.log"
            sys.exit(f"PostgreSQL: {' '.join(map(str, args))} failed:\n{done.stdout}"
                     f"{done.stderr}{log.read_text() if log.exists() else ''}")

    started = False
    try:
        run(bindir / "initdb", "-D", data, "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
            "--no-locale", "--no-sync")
        options = " ".join(shlex.quote(o) for o in (
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
            "-c", f"unix_socket_directories={folder}", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ))
        run(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60",
            "-o", options, "start")
        started = True
        run(bindir / "createdb", "-h", folder, "-p", str(port), "-U", PG_USER, PG_DATABASE)
        yield (major.group(1) if major else "?",
               f"postgres://{PG_USER}@127.0.0.1:{port}/{PG_DATABASE}")
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                            "-w", "stop"], capture_output=True, cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_run(env: dict[str, str]) -> Iterator[Callable[[], None]]:
    """The read-model suites again, on a PostgreSQL server of their own, in a process
    started on entry (beside the SQLite run: two cores, two suites); the function yielded
    waits for it, prints its output and stops on its failure."""
    bindir = postgres_bindir()
    if bindir is None:
        print("\n== PostgreSQL run: SKIPPED, no PostgreSQL server is installed"
              " (apt install postgresql; CI sets REQUIRE_POSTGRES=1 and installs it) ==",
              flush=True)
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            sys.exit("REQUIRE_POSTGRES=1 but no PostgreSQL server was found"
                     " (pg_config --bindir, /usr/lib/postgresql/*/bin)")
        yield lambda: None
        return
    with throwaway_postgres(bindir) as (version, url), \
            tempfile.TemporaryFile("w+") as output:
        print(f"== PostgreSQL {version} run started beside it == ({bindir}, {url})",
              flush=True)
        started = time.monotonic()
        suite = subprocess.Popen(
            [str(PYTHON), "-m", "pytest", *POSTGRES_SUITES], cwd=ROOT,
            env={**env, "DATABASE_URL": url}, stdout=output, stderr=subprocess.STDOUT)

        def finish() -> None:
            code = suite.wait()
            output.seek(0)
            print(f"\n== PostgreSQL {version} run ==", flush=True)
            sys.stdout.write(output.read())
            if code != 0:
                sys.exit(code)
            print(f"== PostgreSQL {version} run passed in {time.monotonic() - started:.0f} s"
                  " ==", flush=True)

        try:
            yield finish
        finally:
            if suite.poll() is None:  # the SQLite run failed: this one is not waited for
                suite.kill()
                suite.wait()


def test(pytest_args: list[str]) -> None:
    ensure_venv("requirements-dev.txt")
    sh(PYTHON, "-m", "ruff", "check", ".")
    # Tests never depend on a developer's .env; settings are read before any conftest.
    env = {**os.environ, "DEBUG": "true", "SECRET_KEY": "tests-only-not-a-secret"}
    sqlite = {**env, "DATABASE_URL": f"sqlite:///{ROOT / 'var' / 'db.sqlite3'}"}
    if pytest_args:
        sh(PYTHON, "-m", "pytest", *pytest_args, env=sqlite)
        print("== PostgreSQL run and mutation run: skipped, pytest arguments were given"
              " (python3 dev.py test alone runs them) ==")
        return
    with postgres_run(env) as finish_postgres:
        print("\n== SQLite run ==", flush=True)
        started = time.monotonic()
        sh(PYTHON, "-m", "pytest", env=sqlite)
        print(f"== SQLite run passed in {time.monotonic() - started:.0f} s ==", flush=True)
        finish_postgres()
    # The money rules: every mutant of the domain must be killed or listed as equivalent
    # (docs/TESTING.md). The other core files take minutes each: python3 dev.py mutate.
    print("\n== mutation run: payments/domain.py ==", flush=True)
    mutate(["payments/domain.py"])


TESTING_DOC = ROOT / "docs" / "TESTING.md"
MUTATE_DIR = ROOT / "var" / "mutate"
DETECTED = {"killed", "timeout"}
# What a mutation run's working folder holds besides its own pyproject.toml: the project's
# files, linked (mutmut copies what it needs into its own mutants/ folder there).
NOT_LINKED = {".git", ".venv", "var", "mutants", "pyproject.toml", ".hypothesis",
              ".pytest_cache", ".ruff_cache", "__pycache__"}


def mutation_groups() -> dict[str, list[str]]:
    """pyproject's [tool.dev.mutate]: each core file and the fast tests it is mutated with."""
    import tomllib  # 3.11+, checked by ensure_venv before this runs

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dev"]["mutate"]


def mutation_workdir(file: str, tests: list[str]) -> Path:
    """A folder where mutmut sees a pyproject that mutates `file` with `tests` alone.

    mutmut 3 reads one test selection for every file it mutates, so each file gets a run
    of its own, in var/mutate/<file>/: links to the project and a copy of pyproject.toml
    whose [tool.mutmut] names that file and those tests. mutmut's own mutants/ folder
    (and its results, for `mutmut show`) stay there until the next run of that file.
    """
    import tomllib

    folder = MUTATE_DIR / Path(file).with_suffix("").as_posix().replace("/", ".")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (folder / entry.name).symlink_to(entry)
    text = (ROOT / "pyproject.toml").read_text()
    header = "[tool.mutmut]\n"
    if text.count(header) != 1:
        sys.exit("pyproject.toml needs one [tool.mutmut] table (its settings for every file)")
    text = text.replace(header, f"{header}only_mutate = {[file]!r}\n"
                                f"pytest_add_cli_args_test_selection = {tests!r}\n")
    tomllib.loads(text)  # refuses a key set twice: the shared table must not name either
    (folder / "pyproject.toml").write_text(text)
    return folder


def mutate(files: list[str]) -> None:
    """mutmut on each core file of pyproject's [tool.dev.mutate] (or on the files named).

    A fresh run each time, so a score is the whole file's. Prints killed / total per file
    and every mutant that was not killed; fails if one of them is not listed in
    docs/TESTING.md (as equivalent, with the reason).
    """
    ensure_venv("requirements-dev.txt")
    groups = mutation_groups()
    unknown = [f for f in files if f not in groups]
    if unknown:
        sys.exit(f"not configured for mutation testing: {', '.join(unknown)}"
                 f" (pyproject.toml [tool.dev.mutate] has {', '.join(groups)})")
    env = {**os.environ, "DEBUG": "true", "SECRET_KEY": "tests-only-not-a-secret",
           "DATABASE_URL": f"sqlite:///{ROOT / 'var' / 'db-mutate.sqlite3'}",
           "HYPOTHESIS_PROFILE": "mutate"}  # generated tests: the same examples each run
    documented = TESTING_DOC.read_text() if TESTING_DOC.exists() else ""
    lines, undocumented = [], 0
    for file in files or list(groups):
        folder = mutation_workdir(file, groups[file])
        started = time.monotonic()
        print(f"+ mutmut run  # in {folder.relative_to(ROOT)}", flush=True)
        # Its progress line redraws itself hundreds of times: shown only if the run fails.
        done = subprocess.run([VENV / "bin" / "mutmut", "run"], cwd=folder, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"mutmut run failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        took = time.monotonic() - started
        listed = subprocess.run([VENV / "bin" / "mutmut", "results", "--all", "true"],
                                cwd=folder, env=env, capture_output=True, text=True,
                                check=True).stdout
        statuses = dict(line.strip().rsplit(": ", 1) for line in listed.splitlines()
                        if ": " in line)
        # As mutmut's own score: a mutant that makes the tests hang was noticed too.
        killed = sum(s in DETECTED for s in statuses.values())
        share = f"{100 * killed / len(statuses):.1f} %" if statuses else "-"
        lines.append(f"{file}: {killed} / {len(statuses)} killed ({share}) in {took:.0f} s")
        for name, status in statuses.items():
            if status not in DETECTED:
                known = name in documented
                undocumented += not known
                lines.append(f"    {name}: {status}"
                             f"{'' if known else '  (not in docs/TESTING.md)'}")
    print("\n== mutation score ==", *lines, sep="\n")
    if undocumented:
        sys.exit(f"{undocumented} mutants survived that docs/TESTING.md does not list"
                 " (cd var/mutate/<file> && ../../../.venv/bin/mutmut show <name>;"
                 " kill it with a test, or list it as equivalent)")


def main() -> None:
    command, *rest = sys.argv[1:] or ["run"]
    if command == "run":
        run(rest)
    elif command == "test":
        test(rest)
    elif command == "mutate":
        mutate(rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

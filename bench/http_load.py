"""HTTP throughput under gunicorn, against the command service in-process.

    .venv/bin/python bench/http_load.py [--seconds 10] [--clients 16] [--contended-rounds 5]

Starts the app under gunicorn (2 workers x 8 threads, production settings: DEBUG
off, a fresh SQLite database and embedded event store in a temporary folder) and
loads it from this process on loopback: ``--clients`` concurrent clients, each with
a keep-alive connection and a token, run create -> authorize -> settle for
``--seconds``; then the same clients GET ``/api/payments/{id}/`` for ``--seconds``.
It prints requests/s and latency percentiles, and, measured in the same run, the
command service's own rates in-process (the same life cycle, then a find of each
payment; no HTTP), so the cost of HTTP shows as a ratio. Targets: >= 500 commands/s
with p99 < 100 ms; >= 800 GET/s.

Then contention (issue 11): the same clients all settle ONE payment at once, 1.00 at
a time, as many settles as its balance allows (``CONTENDED_SETTLES``), in
``--contended-rounds`` rounds on fresh payments. Every one of them should be accepted
(target: accepted/sent >= 0.99), with a p99 at most 3x the p99 of the uncontended
commands above.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import ROOT, percentile, step

PYTHON = sys.executable
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


def start_gunicorn(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [PYTHON, "-m", "gunicorn", "paymentsite.wsgi", "--workers", "2", "--threads", "8",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)  # waiting for the server to listen, not for a race
    server.kill()
    raise SystemExit("gunicorn did not start")


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


def load(port: int, token: str, clients: int, seconds: float, work: str,
         ids: list[str]) -> tuple[int, list[float], int, float]:
    """Run ``work`` on ``clients`` threads for ``seconds``: (requests, latencies, errors, s)."""
    workers = [Client(port, token) for _ in range(clients)]
    # One after another, as clients arrive: 16 connections at the same instant tend to
    # be accepted by one gunicorn worker, leaving the other nearly idle.
    for client in workers:
        client.connect()
    start = threading.Barrier(clients + 1)
    stop_at: list[float] = []

    def life_cycles(client: Client) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            created = client.request("POST", "/api/payments/", {"amount": "100.00"})
            if not created:
                continue
            path = f"/api/payments/{created['id']}"
            client.request("POST", f"{path}/authorize/", {"bank_name": "Bench Bank"})
            client.request("POST", f"{path}/settle/", {})
            ids.append(created["id"])

    def reads(client: Client) -> None:
        start.wait()
        n = 0
        while time.perf_counter() < stop_at[0]:
            client.request("GET", f"/api/payments/{ids[n % len(ids)]}/")
            n += 1

    target = life_cycles if work == "commands" else reads
    threads = [threading.Thread(target=target, args=(c,)) for c in workers]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at.append(began + seconds)
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies = sorted(lat for c in workers for lat in c.latencies)
    return len(latencies), latencies, sum(c.errors for c in workers), elapsed


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


def measure(*, seconds: float = 10.0, clients: int = 16, in_process_payments: int = 1000,
            contended_rounds: int = 5) -> dict[str, Any]:
    """Every figure of this benchmark, by name (rates per second, latencies in s)."""
    figures: dict[str, Any] = {"clients": clients}
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-") as tmp:
        folder = Path(tmp)
        env = production_env(folder)
        token = prepare_site(env)
        port = free_port()
        server = start_gunicorn(env, port)
        try:
            ids: list[str] = []
            for work in ("commands", "reads"):
                with step(f"HTTP {work}, {clients} clients"):
                    n, latencies, errors, elapsed = load(port, token, clients, seconds, work,
                                                         ids)
                figures |= {f"{work}_rate": n / elapsed, f"{work}_errors": errors,
                            f"{work}_p50": percentile(latencies, 0.5),
                            f"{work}_p99": percentile(latencies, 0.99)}
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
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--contended-rounds", type=int, default=5,
                        help=f"payments settled {CONTENDED_SETTLES} times by all clients at once")
    args = parser.parse_args()
    f = measure(seconds=args.seconds, clients=args.clients,
                contended_rounds=args.contended_rounds)
    print(f"HTTP commands (create/authorize/settle), {args.clients} clients:"
          f" {f['commands_rate']:7.0f} commands/s  p50 {f['commands_p50'] * 1000:.1f} ms"
          f"  p99 {f['commands_p99'] * 1000:.1f} ms  errors {f['commands_errors']}"
          "  (target >= 500/s, p99 < 100 ms)")
    print(f"HTTP GET /api/payments/{{id}}/, {args.clients} clients:"
          f"        {f['reads_rate']:7.0f} requests/s  p50 {f['reads_p50'] * 1000:.1f} ms"
          f"  p99 {f['reads_p99'] * 1000:.1f} ms  errors {f['reads_errors']}"
          "  (target >= 800/s)")
    print(f"HTTP settles on one payment, {args.clients} clients:"
          f"    {f['contended_accepted']} of {f['contended_sent']} accepted"
          f" ({f['contended_accepted'] / f['contended_sent']:.2f}; 409: {f['contended_conflicts']})"
          f"  p50 {f['contended_p50'] * 1000:.1f} ms  p99 {f['contended_p99'] * 1000:.1f} ms"
          f" ({f['contended_p99'] / f['commands_p99']:.2f}x the uncontended p99)"
          "  (target >= 0.99 accepted, p99 <= 3x)")
    print(f"command service in-process, one client:          {f['service_rate']:7.0f} commands/s"
          f"  (HTTP / in-process: {f['commands_rate'] / f['service_rate']:.2f})")
    print(f"find_payment in-process, one client:             {f['find_rate']:7.0f} finds/s"
          f"  (HTTP GET / in-process: {f['reads_rate'] / f['find_rate']:.2f})")


if __name__ == "__main__":
    main()

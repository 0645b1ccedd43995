"""HTTP throughput under gunicorn, against the command service in-process.

    .venv/bin/python bench/http_load.py [--seconds 10] [--clients 16]

Starts the app under gunicorn (2 workers x 8 threads, production settings: DEBUG
off, a fresh SQLite database and embedded event store in a temporary folder) and
loads it from this process on loopback: ``--clients`` concurrent clients, each with
a keep-alive connection and a token, run create -> authorize -> settle for
``--seconds``; then the same clients GET ``/api/payments/{id}/`` for ``--seconds``.
It prints requests/s and latency percentiles, and, measured in the same run, the
command service's own rate in-process (the same life cycle, no HTTP), so the cost
of HTTP shows as a ratio. Targets: >= 500 commands/s with p99 < 100 ms; >= 800 GET/s.
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

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        started = time.perf_counter()
        self.connection.request(method, path, body=json.dumps(body) if body is not None else None,
                                headers=self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        self.latencies.append(time.perf_counter() - started)
        if response.status >= 400:
            self.errors += 1
            return {}
        return json.loads(payload)


def load(port: int, token: str, clients: int, seconds: float, work: str,
         ids: list[str]) -> tuple[int, list[float], int, float]:
    """Run ``work`` on ``clients`` threads for ``seconds``: (requests, latencies, errors, s)."""
    workers = [Client(port, token) for _ in range(clients)]
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


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


def in_process_rate(folder: Path, payments: int) -> float:
    """The same life cycle straight through the service: commands per second."""
    code = (
        "import time, django; django.setup()\n"
        "from payments import services\n"
        f"n = {payments}; t = time.perf_counter()\n"
        "for _ in range(n):\n"
        "    p = services.create_payment(amount='100.00')\n"
        "    services.authorize_payment(payment_id=p.id, bank_name='Bench Bank')\n"
        "    services.settle_payment(payment_id=p.id)\n"
        "print(3 * n / (time.perf_counter() - t))\n"
    )
    env = {**production_env(folder), "EVENTSTORE_URI": f"sqlite:///{folder / 'inproc.sqlite3'}",
           "DJANGO_SETTINGS_MODULE": "paymentsite.settings"}
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "var") as tmp:
        folder = Path(tmp)
        env = production_env(folder)
        manage(env, "migrate", "--verbosity", "0")
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")  # as a deploy would
        manage(env, "shell", "--no-imports", "-c",
               "from django.contrib.auth import get_user_model;"
               " get_user_model().objects.create_user('bench', password=None)")
        token = manage(env, "drf_create_token", "bench").split()[2]
        port = free_port()
        server = start_gunicorn(env, port)
        try:
            ids: list[str] = []
            n, lat, errors, elapsed = load(port, token, args.clients, args.seconds, "commands",
                                           ids)
            print(f"HTTP commands (create/authorize/settle), {args.clients} clients:"
                  f" {n / elapsed:7.0f} commands/s  p50 {percentile(lat, .5) * 1000:.1f} ms"
                  f"  p99 {percentile(lat, .99) * 1000:.1f} ms  errors {errors}"
                  "  (target >= 500/s, p99 < 100 ms)")
            commands_rate = n / elapsed
            n, lat, errors, elapsed = load(port, token, args.clients, args.seconds, "reads", ids)
            print(f"HTTP GET /api/payments/{{id}}/, {args.clients} clients:"
                  f"        {n / elapsed:7.0f} requests/s  p50 {percentile(lat, .5) * 1000:.1f} ms"
                  f"  p99 {percentile(lat, .99) * 1000:.1f} ms  errors {errors}"
                  "  (target >= 800/s)")
        finally:
            server.terminate()
            server.wait(30)
        service = in_process_rate(folder, 1000)
        print(f"command service in-process, one client:          {service:7.0f} commands/s"
              f"  (HTTP / in-process: {commands_rate / service:.2f})")


if __name__ == "__main__":
    main()

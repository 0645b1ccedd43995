"""Read your writes over HTTP: a list read right after a create, with the create's position.

    .venv/bin/python bench/read_your_writes.py [--samples 300]

Deployed as in production (``http_load.py``'s gunicorn with production's configuration, DEBUG
off, a fresh SQLite database and embedded event store) with the payment projection's
runner in a process of its own (``manage.py run_projection payment``), one client on
loopback, one request at a time:

* **read your writes**: ``POST /api/payments/``, then at once ``GET
  /api/payments/?after=<its position>&page_size=10``; the GET's latency, checked to
  list the new payment first and not be marked stale;
* **the plain list**, the baseline: the same GET without ``after``, right after it;
* **live latency** across processes: another create, then the time from its answer
  until the runner has committed its checkpoint past it (read from the database file
  every half millisecond, beside the server): what a read with ``after`` must wait
  for in this deployment.

Target (issue 13): the read-your-writes p99 at most twice the plain list's p99 plus
the live latency's p99.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, percentile, step
from http_load import (
    PYTHON,
    Client,
    free_port,
    prepare_site,
    production_env,
    start_gunicorn,
)

LIST = "/api/payments/?page_size=10"
SEED = 100  # payments before the timed ones: a list with a page of rows to draw
POLL = 0.0005  # s between two reads of the checkpoint, for the live latency


def checkpoint(database: sqlite3.Connection) -> int:
    found = database.execute(
        "SELECT position FROM projections_checkpoint WHERE name = 'payment'").fetchone()
    return found[0] if found else 0


def measure(*, samples: int = 300) -> dict[str, Any]:
    """Every figure of this benchmark, by name (latencies in s)."""
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-") as tmp:
        folder = Path(tmp)
        env = production_env(folder)
        token = prepare_site(env)
        port = free_port()
        server = start_gunicorn(env, port, folder / "server")
        runner = subprocess.Popen([PYTHON, "manage.py", "run_projection", "payment"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        database = sqlite3.connect(f"file:{folder / 'db.sqlite3'}?mode=ro", uri=True)
        try:
            client = Client(port, token)
            client.connect()
            with step(f"seed {SEED} payments"):
                for _ in range(SEED):
                    client.request("POST", "/api/payments/", {"amount": "1.00"})
                client.request("GET", LIST)
            after, plain, live = [], [], []
            stale = 0
            with step(f"read your writes and the plain list, {samples} samples"):
                for _ in range(samples):
                    created = client.request("POST", "/api/payments/", {"amount": "5.00"})
                    started = time.perf_counter()
                    listed = client.request("GET", f"{LIST}&after={created['position']}")
                    after.append(time.perf_counter() - started)
                    if listed["results"][0]["id"] != created["id"]:
                        stale += 1
                    started = time.perf_counter()
                    client.request("GET", LIST)
                    plain.append(time.perf_counter() - started)
            with step(f"live latency, {samples} samples"):
                for _ in range(samples):
                    created = client.request("POST", "/api/payments/", {"amount": "6.00"})
                    answered = time.perf_counter()
                    while checkpoint(database) < created["position"]:
                        time.sleep(POLL)  # measuring: how long the runner takes
                    live.append(time.perf_counter() - answered)
            if client.errors or stale:
                raise RuntimeError(f"{client.errors} requests failed; {stale} lists read with"
                                   " after did not show the payment created just before")
        finally:
            database.close()
            runner.terminate()
            runner.wait(30)
            server.terminate()
            server.wait(30)
    after.sort()
    plain.sort()
    live.sort()
    return {
        "samples": samples,
        "after_p50": percentile(after, 0.5), "after_p99": percentile(after, 0.99),
        "plain_p50": percentile(plain, 0.5), "plain_p99": percentile(plain, 0.99),
        "live_p50": percentile(live, 0.5), "live_p99": percentile(live, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    f = measure(samples=args.samples)
    bound = 2 * f["plain_p99"] + f["live_p99"]
    print(f"GET {LIST}&after=<create's position>: p50 {f['after_p50'] * 1000:.1f} ms,"
          f" p99 {f['after_p99'] * 1000:.1f} ms")
    print(f"GET {LIST}:                          p50 {f['plain_p50'] * 1000:.1f} ms,"
          f" p99 {f['plain_p99'] * 1000:.1f} ms")
    print(f"live latency, runner in its own process: p50 {f['live_p50'] * 1000:.1f} ms,"
          f" p99 {f['live_p99'] * 1000:.1f} ms")
    print(f"target: p99 with after <= 2 x plain p99 + live p99 = {bound * 1000:.1f} ms:"
          f" {'met' if f['after_p99'] <= bound else 'NOT met'}")


if __name__ == "__main__":
    main()

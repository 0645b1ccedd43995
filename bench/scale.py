"""A scale point: rebuild and read the projections over a large event store.

    .venv/bin/python bench/scale.py [--payments 1000000] [--requests 200]

Writes N payment histories (``dataset.py``, ~2.95 events each) straight into a fresh
embedded store, rebuilds both projections from zero with the runner, each in a
process of its own (as ``run_projection all --reset`` deploys them), and then, with
the read model at N rows, times requests one at a time through Django's test client
(no network; production settings): ``GET /api/payments/?status=settled`` (with and
without a bank) with a token, and the admin's payment list (with and without a
status filter) as a logged-in superuser: N requests each, fewer if they take over
the time budget. It prints the rebuild time and each request's median and 99th
percentile.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from harness import percentile, setup_django, step

FOLDER = setup_django()

from dataset import BANKS, write_payments  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from rebuild import rebuild_in_processes  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from projections.models import PaymentView  # noqa: E402

# What each timed request asks for, by the name its figures carry.
REQUESTS = {
    "api_status": ("api", "/api/payments/?status=settled"),
    "api_status_bank": ("api", f"/api/payments/?status=settled&bank_name={BANKS[0]}"),
    "admin": ("admin", "/admin/projections/paymentview/"),
    "admin_status": ("admin", "/admin/projections/paymentview/?status__exact=settled"),
}


def time_requests(client: Client, path: str, count: int, budget: float,
                  **headers: str) -> list[float]:
    """Seconds of each of ``count`` GETs of ``path`` (fewer if they take over ``budget``
    seconds in all), sorted; any answer but 200 fails. One untimed GET first: imports,
    templates and the page cache."""
    latencies: list[float] = []
    deadline = None
    while len(latencies) < count and (deadline is None or time.perf_counter() < deadline):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"GET {path}: {response.status_code}")
        if deadline is None:
            deadline = time.perf_counter() + budget
        else:
            latencies.append(elapsed)
    return sorted(latencies)


def measure(*, payments: int = 1_000_000, requests: int = 200,
            budget: float = 60.0) -> dict[str, Any]:
    """Every figure of this benchmark, by name (seconds, events/s)."""
    with step("migrate"):
        call_command("migrate", verbosity=0)
    with step(f"write {payments:,} payments"):
        started = time.perf_counter()
        _, events = write_payments(FOLDER / "events.sqlite3", payments=payments)
        load_seconds = time.perf_counter() - started
    with step(f"rebuild from {events:,} events, one process each"):
        rebuild_seconds = rebuild_in_processes(batch_size=1000)
    rows = PaymentView.objects.count()
    if rows != payments:
        raise SystemExit(f"the rebuild left {rows} PaymentView rows for {payments} payments")
    figures: dict[str, Any] = {
        "payments": payments, "events": events, "load_seconds": load_seconds,
        "rebuild_seconds": rebuild_seconds, "rebuild_rate": events / rebuild_seconds,
        "requests": requests,
    }
    user = get_user_model().objects.create_superuser("bench", password=None)
    token = Token.objects.create(user=user).key
    client = Client()
    client.force_login(user)
    # The manifest of hashed static files needs collectstatic; the plain storage gives
    # the same pages without it (only the asset URLs differ).
    plain_static = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                    "staticfiles": {
                        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    with override_settings(STORAGES=plain_static):
        for name, (kind, path) in REQUESTS.items():
            with step(f"{requests} x GET {path}"):
                headers = {"authorization": f"Token {token}"} if kind == "api" else {}
                latencies = time_requests(client, path, requests, budget, **headers)
            figures[f"{name}_p50"] = percentile(latencies, 0.5)
            figures[f"{name}_p99"] = percentile(latencies, 0.99)
            figures[f"{name}_samples"] = len(latencies)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per URL")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per URL: fewer requests if they take longer")
    args = parser.parse_args()
    f = measure(payments=args.payments, requests=args.requests, budget=args.budget)
    print(f"{f['payments']:,} payments, {f['events']:,} events written in"
          f" {f['load_seconds']:.1f} s")
    print(f"rebuild, both projections, one process each: {f['rebuild_seconds']:.1f} s,"
          f" {f['rebuild_rate']:,.0f} events/s (target >= 30,000)")
    for name, (_, path) in REQUESTS.items():
        print(f"GET {path}: median {f[f'{name}_p50'] * 1000:.1f} ms,"
              f" p99 {f[f'{name}_p99'] * 1000:.1f} ms over {f[f'{name}_samples']} requests")


if __name__ == "__main__":
    main()

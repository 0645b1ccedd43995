"""What the benchmarks share: Django set up as in production on throw-away data, and
small helpers for figures and progress.

Each benchmark module calls ``setup_django()`` before it imports the app's models;
``bench/run.py`` runs each benchmark in a process of its own, so each gets its own
settings and its own folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_folder: tempfile.TemporaryDirectory[str] | None = None


def setup_django() -> Path:
    """Production settings (DEBUG off: no query log) on a fresh read-model database and
    embedded event store in a temporary folder under ``var/``; once per process."""
    global _folder
    if _folder is None:
        (ROOT / "var").mkdir(exist_ok=True)
        _folder = tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-")
        folder = Path(_folder.name)
        sys.path.insert(0, str(ROOT))
        os.environ.update({
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "EVENTSTORE_URI": f"sqlite:///{folder / 'events.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "paymentsite.settings",
            "DEBUG": "false",
            # Requests go through Django's test client, over plain HTTP.
            "ALLOWED_HOSTS": "testserver,127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "false",
        })
        os.environ.setdefault("SECRET_KEY", "bench-only")
        # The figures are the app's work, not its log sink's: no line per command
        # unless asked for (LOG_LEVEL=INFO).
        os.environ.setdefault("LOG_LEVEL", "WARNING")
        import django

        django.setup()
    return Path(_folder.name)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted ``values`` lie."""
    return values[min(len(values) - 1, int(len(values) * fraction))]


def say(message: str) -> None:
    """Progress on stderr, so that a long run shows where it is."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Say how long a step took once it is done."""
    started = time.perf_counter()
    yield
    say(f"  {name}: {time.perf_counter() - started:.1f} s")

"""A gunicorn worker's requests under cProfile, for ``http_load.py`` (BENCH_PROFILE).

    BENCH_PROFILE=var/profiles .venv/bin/python bench/http_load.py

gunicorn serves ``bench.profile_worker`` instead of the app: it loads the app named by
BENCH_PROFILE_APP and profiles each request in the thread that serves it (cProfile sees
one thread); at the worker's exit, the threads' profiles, added up, go to
``$BENCH_PROFILE/<pid>.prof`` (read them with ``python -m pstats``). Only the app's
work is in it, not gunicorn's own (parsing, the access log, the socket).
"""

from __future__ import annotations

import atexit
import cProfile
import importlib
import os
import pstats
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_app = importlib.import_module(os.environ["BENCH_PROFILE_APP"]).application
_local = threading.local()
_profiles: list[cProfile.Profile] = []
_profiles_lock = threading.Lock()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    profile = getattr(_local, "profile", None)
    if profile is None:
        profile = _local.profile = cProfile.Profile()
        with _profiles_lock:
            _profiles.append(profile)
    profile.enable()
    try:
        return _app(environ, start_response)
    finally:
        profile.disable()


@atexit.register
def _dump() -> None:
    with _profiles_lock:
        if not _profiles:
            return
        stats = pstats.Stats(_profiles[0])
        for profile in _profiles[1:]:
            stats.add(profile)
    folder = Path(os.environ["BENCH_PROFILE"])
    folder.mkdir(parents=True, exist_ok=True)
    stats.dump_stats(folder / f"{os.getpid()}.prof")

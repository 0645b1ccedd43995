"""gunicorn's settings for the web service (Dockerfile, docker-compose.yml), from the environment.

    gunicorn --config paymentsite/gunicorn.conf.py paymentsite.wsgi

On SIGTERM (``docker stop``) gunicorn stops accepting, lets running requests finish for
up to GUNICORN_GRACEFUL_TIMEOUT seconds, then exits: keep that below the container's
stop_grace_period (30 s in docker-compose.yml), after which docker kills.
"""

import os
import shutil
import tempfile
from typing import Any


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
# WEB_CONCURRENCY is also the variable gunicorn itself (and most platforms) use for this.
workers = _int("WEB_CONCURRENCY", 2)
worker_class = "gthread"  # as bench/http_load.py measured (docs/BENCHMARKS.md)
threads = _int("GUNICORN_THREADS", 4)
# Each worker loads the application after the fork: its tracing (paymentsite/tracing.py,
# an exporter thread per process) and its database connections are its own.
preload_app = False
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 20)
keepalive = 5
# Access and error log to stdout/stderr: `docker compose logs web`.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Worker heartbeats on tmpfs rather than the container's overlay filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# gunicornc's socket (`docker compose exec web gunicornc …`): gunicorn's default is under
# $HOME, which the image's user does not have.
control_socket = os.path.join(tempfile.gettempdir(), "gunicorn.ctl")

# Metrics (paymentsite/metrics.py): prometheus_client's multiprocess mode. Each worker
# writes its values to files in PROMETHEUS_MULTIPROC_DIR, and /metrics, in whichever worker
# answers, sums them all: every worker's counts add up (a dead worker's too). Set here, in
# the master before any worker starts, so that no deployment can forget it; emptied at
# start (an earlier run's files would count again). Unless given, a folder of this master's
# own, removed when it exits.
_own_metrics_dir: str | None = None


def on_starting(server: Any) -> None:
    global _own_metrics_dir
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _own_metrics_dir = os.path.join(tempfile.gettempdir(), f"paymentsite-metrics-{os.getpid()}")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for entry in os.scandir(folder):
        if entry.name.endswith(".db"):
            os.remove(entry.path)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges go with it (its counters and histograms stay)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)

"""gunicorn's settings for the web service (Dockerfile, docker-compose.yml), from the environment.

    gunicorn --config paymentsite/gunicorn.conf.py paymentsite.wsgi

On SIGTERM (``docker stop``) gunicorn stops accepting, lets running requests finish for
up to GUNICORN_GRACEFUL_TIMEOUT seconds, then exits: keep that below the container's
stop_grace_period (30 s in docker-compose.yml), after which docker kills.
"""

import os
import tempfile


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

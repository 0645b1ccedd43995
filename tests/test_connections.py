"""Persistent database connections: CONN_MAX_AGE and CONN_HEALTH_CHECKS from the
environment, and what the request cycle does with them (a runner's: test_runner.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def connection_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """The default database's CONN_MAX_AGE and CONN_HEALTH_CHECKS, as a process started
    with ``env`` reads them."""
    code = ("import django, json; django.setup(); from django.conf import settings;"
            " d = settings.DATABASES['default'];"
            " print(json.dumps([d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS']]))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONN_")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "paymentsite.settings", "DEBUG": "true", **env},
    )


def test_connection_settings_come_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    read = {
        "defaults": ({}, [600, True]),
        "variables": ({"CONN_MAX_AGE": "0", "CONN_HEALTH_CHECKS": "false"}, [0, False]),
        "the URL's own": ({"DATABASE_URL": f"{url}?conn_max_age=30&conn_health_checks=false"},
                          [30, False]),
        "both, agreeing": ({"DATABASE_URL": f"{url}?conn_max_age=30", "CONN_MAX_AGE": "30"},
                           [30, True]),
    }
    for case, (env, expected) in read.items():
        done = connection_settings(**env)
        assert done.returncode == 0, (case, done.stderr)
        assert json.loads(done.stdout) == expected, case
    refused = {
        "disagree: set one of them": {"DATABASE_URL": f"{url}?conn_max_age=30",
                                      "CONN_MAX_AGE": "60"},
        "CONN_MAX_AGE must be a whole number of seconds": {"CONN_MAX_AGE": "10m"},
        "CONN_MAX_AGE must be 0 or more seconds": {"CONN_MAX_AGE": "-1"},
    }
    for message, env in refused.items():
        done = connection_settings(**env)
        assert done.returncode != 0
        assert message in done.stderr


def test_a_boolean_setting_that_reads_as_neither_stops_the_start_up(tmp_path: Path) -> None:
    """django-environ alone reads any word that is not true-like as false: a typo would
    turn a setting off without a word (settings.Env)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    for value, expected in {"off": False, "No": False, "0": False, " yes ": True, "1": True,
                            "on": True}.items():
        done = connection_settings(CONN_HEALTH_CHECKS=value)
        assert done.returncode == 0, (value, done.stderr)
        assert json.loads(done.stdout) == [600, expected], value
    refused = {
        "CONN_HEALTH_CHECKS must be true or false (on/off, yes/no, 1/0), not 'maybe'":
            {"CONN_HEALTH_CHECKS": "maybe"},
        "METRICS_ENABLED must be true or false (on/off, yes/no, 1/0), not 'ture'":
            {"METRICS_ENABLED": "ture"},
        "DATABASE_URL's ?conn_health_checks= must be true or false, not 'maybe'":
            {"DATABASE_URL": f"{url}?conn_health_checks=maybe"},
    }
    for message, env in refused.items():
        done = connection_settings(**env)
        assert done.returncode != 0
        assert message in done.stderr


def readyz(handler: WSGIHandler) -> object:
    """GET /readyz (which queries the database) through the WSGI handler as gunicorn
    calls it, request signals and all; the DB-API connection it used."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO()}
    response = handler(environ, lambda status, headers: None)
    used = connection.connection
    response.close()  # what the server does when the answer is sent: request_finished
    assert used is not None
    return used


@pytest.mark.django_db(transaction=True)
def test_a_web_thread_keeps_its_connection_between_requests_for_conn_max_age() -> None:
    handler = WSGIHandler()
    first = readyz(handler)
    assert readyz(handler) is first  # CONN_MAX_AGE (600 s): the same connection
    assert connection.connection is first  # still open between the requests
    connection.close_at = 0  # as if 600 s had passed: closed at the next request's start
    assert readyz(handler) is not first
    connection.settings_dict["CONN_MAX_AGE"] = 0  # Django's default: one per request
    connection.close()  # (a connection's age limit is set when it opens)
    try:
        assert readyz(handler) is not None
        assert connection.connection is None
    finally:
        connection.settings_dict["CONN_MAX_AGE"] = 600
        connection.close()

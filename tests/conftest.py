"""Fixtures: every test gets its own embedded event store file."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from payments.eventstore import EventStore, reset_event_store
from payments.eventstore.embedded import EmbeddedEventStore

# dev.py mutate runs the tests once per mutant: generated tests then draw the same
# examples every time (profiles of a test file say so again for their own settings).
settings.register_profile("mutate", derandomize=True, database=None)
if os.environ.get("HYPOTHESIS_PROFILE") == "mutate":
    settings.load_profile("mutate")


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """The SQLite test database's file named by this process, made where it can be.

    The settings name it once, at import; a process forked after that (mutmut's runs of
    each mutant) would share the file with its siblings. And its folder, var/, is not
    there in mutmut's copy of the project.
    """
    from django.conf import settings

    test = settings.DATABASES["default"].get("TEST", {})
    name = test.get("NAME")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and name:
        path = Path(str(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        test["NAME"] = str(path.with_name(f"test-db-{os.getpid()}.sqlite3"))


@pytest.fixture(scope="session", autouse=True)
def _remove_test_database_lock_files() -> Iterator[None]:
    """The test database's leftovers (runner locks, WAL files) go with it."""
    yield
    from django.conf import settings

    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name:
        for leftover in Path(str(name)).parent.glob(f"{Path(str(name)).name}*"):
            leftover.unlink(missing_ok=True)


def using_event_store(settings, store_file: Path) -> Iterator[None]:
    """For a fixture: the process's store is the embedded one in ``store_file``."""
    reset_event_store()
    settings.EVENTSTORE_URI = f"sqlite:///{store_file}"
    yield
    reset_event_store()


@pytest.fixture(autouse=True)
def _isolated_event_store(settings, tmp_path: Path) -> Iterator[None]:
    """Point EVENTSTORE_URI at a fresh file, so no test sees another's events."""
    yield from using_event_store(settings, tmp_path / "events.sqlite3")


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[EventStore]:
    store = EmbeddedEventStore(tmp_path / "embedded-events.sqlite3")
    yield store
    store.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An esdb URI whose TCP port accepts connections but never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"esdb://127.0.0.1:{listener.getsockname()[1]}?Tls=false"
    finally:
        listener.close()


@pytest.fixture
def user():
    """A person who uses the site: logged in, not staff (files may have their own)."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("clerk", password="a long test password")


@pytest.fixture
def browser(user):
    """Django's test client, logged in as ``user``."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    """Each test starts with an empty cache: the lag shown on pages (cached for a few
    seconds) and the API's throttle counters are per test."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()

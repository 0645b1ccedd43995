"""Catch-up from EventStoreDB (the protocol double): the runner's memory and its rate.

    .venv/bin/python bench/catchup.py [--events 1000000] [--small 10000] [--unbounded]

Issue 11: a catch-up of any length must hold a constant number of events in memory.
Payment histories (``dataset.py``: made by the aggregate, encoded as the service
does) are loaded into the EventStoreDB double (``tests/esdb_double.py``, an
in-process gRPC server speaking EventStoreDB's protocol), which runs in a process of
its own so that its memory is not the runner's. Then the payment projection's
runner catches up as deployed: ``manage.py run_projection payment --once``, in a
process of its own, with production settings (DEBUG off) on a fresh, migrated SQLite
read model and ``EVENTSTORE_URI`` the double's. For each run:

* **peak RSS**: the process's own high-water mark (``VmHWM`` in
  ``/proc/<pid>/status``, polled every 50 ms and at each line it writes; see
  ``Watched`` for why not ``ru_maxrss``); beside it, its RSS when it started
  following (read at that log line): what Python, Django, the app and gRPC take
  before the first event;
* **events/s**: events applied (its own summary line) over the seconds from its
  "following from position" log line to that summary line, so the process's
  start-up (Python, Django, the connection, ``head_position``) is not counted;
* **events a batch**: events over its log lines per batch (one transaction each).

It does that at ``--small`` and at ``--events`` events (the ratio of the peak RSS:
target <= 1.2), and, as the baseline of the rate, the same command on an embedded
store written with the same number of payment histories (``write_payments``).
``--unbounded`` also measures the large store as before issue 11, with the adapter's
buffer at 10**9 events (what the unbounded queue was): the same command, in a process
that sets the adapter constructor's default before Django starts; and a subscriber
whose consumer takes nothing (``--paused-subscriber``), with the buffer at its
default and at 10**9: what the subscription holds when its consumer stops. (The
runner empties its queue faster than this double fills it, in batches of a few
events, so its queue stays short either way; a paused consumer shows what the
bound prevents.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import ROOT, say, step

sys.path.insert(0, str(ROOT))  # the app's packages (and tests/), without Django set up

PYTHON = sys.executable
UNBOUNDED = 10**9  # events: what the queue before issue 11 held at most
STILL = 3.0  # s: a paused subscriber's buffer is full once it did not grow for this long
FOLLOWING = re.compile(r"projection payment: following from position")
SUMMARY = re.compile(r"^payment: applied (\d+) events, checkpoint at (\d+)")
BATCH = re.compile(r"projection payment: applied (\d+) events, positions")  # one a batch


@dataclass(frozen=True)
class Catchup:
    """One runner process's catch-up."""

    events: int  # applied, by its own summary line
    seconds: float  # from its "following" log line to its summary line
    wall: float  # from start to exit
    peak_rss: int  # bytes: VmHWM
    start_rss: int  # bytes: VmRSS when it started following
    batches: int  # transactions with events (its log line per batch)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _status(pid: int) -> dict[str, int]:
    """The process's memory figures now (``VmRSS``, ``VmHWM``, ...), in bytes; empty
    once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {name: int(kib) * 1024
            for name, kib in re.findall(r"^(\w+):\s+(\d+) kB$", status, re.MULTILINE)}


class Watched:
    """A child process run to its end, its output read line by line as it comes
    (``on_line(stream, line, time, rss)``, with the time and its RSS then) and its
    memory polled.

    The peak is the process's own high-water mark, ``VmHWM``, polled every
    ``POLL`` s while it runs (and read at each line of output): the last value before
    it exits. Not ``ru_maxrss``: the kernel starts a child's with its parent's
    high-water mark when it execs (Python spawns with vfork), so a child of a process
    that once held 600 MiB reports at least 600 MiB.
    """

    POLL = 0.05
    TIMEOUT = 3600.0  # s: a run that takes longer is stuck

    def __init__(self, argv: list[str], env: dict[str, str],
                 on_line: Callable[[str, str, float, int], None]) -> None:
        self.peak = 0
        self.last_lines: deque[str] = deque(maxlen=40)  # should it fail
        started = time.perf_counter()
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self._on_line = on_line
        done = threading.Event()
        threads = [threading.Thread(target=self._read, args=(name, stream))
                   for name, stream in (("stdout", self.process.stdout),
                                        ("stderr", self.process.stderr))]
        threads.append(threading.Thread(target=self._poll, args=(done,)))
        for thread in threads:
            thread.start()
        try:
            self.returncode = self.process.wait(self.TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        self.wall = time.perf_counter() - started
        done.set()
        for thread in threads:
            thread.join()

    def rss(self) -> int:
        """Its resident set now (and the peak updated)."""
        status = _status(self.process.pid)
        self.peak = max(self.peak, status.get("VmHWM", 0))
        return status.get("VmRSS", 0)

    def _poll(self, done: threading.Event) -> None:
        while not done.wait(self.POLL):
            self.rss()

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            now = time.perf_counter()
            rss = self.rss()
            self.last_lines.append(line)
            self._on_line(name, line, now, rss)


def runner_env(folder: Path, uri: str) -> dict[str, str]:
    """What a deployed runner has: production settings, its own read model, the store."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "paymentsite.settings",
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
        "EVENTSTORE_URI": uri,
        "LOG_LEVEL": "INFO",  # as deployed: its "following" line starts the clock
        "LOG_FORMAT": "plain",
        "PYTHONUNBUFFERED": "1",  # its lines when they are written, not at exit
    }


def catch_up(folder: Path, uri: str, *, buffer: int | None = None) -> Catchup:
    """Run ``manage.py run_projection payment --once`` on a copy of the migrated read
    model in ``folder/template`` and measure it; ``buffer``: the adapter's buffer
    instead of its default (through this script's ``--runner-with-buffer``)."""
    run = Path(tempfile.mkdtemp(dir=folder, prefix="run-"))
    for source in (folder / "template").iterdir():
        shutil.copy(source, run / source.name)
    command = (["manage.py"] if buffer is None
               else [__file__, "--runner-with-buffer", str(buffer)])
    seen: dict[str, Any] = {"batches": 0}

    def on_line(stream: str, line: str, now: float, rss: int) -> None:
        if stream == "stderr" and BATCH.search(line):
            seen["batches"] += 1
        elif stream == "stderr" and "following" not in seen and FOLLOWING.search(line):
            seen["following"] = now
            seen["start_rss"] = rss
        elif stream == "stdout" and (found := SUMMARY.match(line)):
            seen["done"] = now
            seen["applied"] = int(found.group(1))

    watched = Watched([PYTHON, *command, "run_projection", "payment", "--once"],
                      runner_env(run, uri), on_line)
    if watched.returncode != 0 or "done" not in seen or "following" not in seen:
        raise SystemExit(f"the runner failed ({watched.returncode}):\n"
                         + "".join(watched.last_lines))
    shutil.rmtree(run)
    return Catchup(events=seen["applied"], seconds=seen["done"] - seen["following"],
                   wall=watched.wall, peak_rss=watched.peak, start_rss=seen["start_rss"],
                   batches=seen["batches"])


@contextmanager
def double_with(payments: int) -> Iterator[tuple[str, int]]:
    """An EventStoreDB double in a process of its own, holding ``payments`` histories;
    (its URI, the events it holds). It serves until this context ends."""
    process = subprocess.Popen([PYTHON, __file__, "--serve", str(payments)], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        with step(f"load {payments:,} payment histories into the double"):
            line = process.stdout.readline()
        if not line:
            raise SystemExit(f"the double did not start ({process.wait()})")
        ready = json.loads(line)
        yield ready["uri"], ready["events"]
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the double's signal to stop
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(payments: int) -> None:
    """The double's process: load the histories, print the URI, serve until stdin ends.

    The events go in with the double's ``load`` (one call per event, straight into its
    log, no gRPC), before it serves.
    """
    sys.path.insert(0, str(ROOT))
    from dataset import histories

    from tests.esdb_double import EventStoreDBDouble

    double = EventStoreDBDouble()
    events = 0
    for stream, _, type_name, data, metadata in histories(0, payments):
        double.load(stream, type_name, data, 1, metadata=metadata)
        events += 1
    uri = double.start()
    print(json.dumps({"uri": uri, "events": events}), flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes it (or goes away)
    finally:
        double.stop()


def paused_subscriber(buffer: int) -> None:
    """A subscriber whose consumer takes nothing, on ``EVENTSTORE_URI``: prints
    ``subscribed``, then, once the subscription's buffer has not grown for ``STILL``
    seconds, how many items it holds (the process's memory is measured outside)."""
    sys.path.insert(0, str(ROOT))
    from payments.eventstore.esdb import EventStoreDBEventStore

    store = EventStoreDBEventStore(os.environ["EVENTSTORE_URI"], subscription_buffer=buffer)
    subscription = store.subscribe(after=None)
    print("subscribed", flush=True)
    held, since = -1, time.monotonic()
    while time.monotonic() - since < STILL:
        time.sleep(0.25)
        if subscription.buffered != held:
            held, since = subscription.buffered, time.monotonic()
    print(json.dumps({"buffered": held}), flush=True)
    store.close()


def raw_subscriber() -> None:
    """The ceiling of a catch-up from this double: esdbclient's own subscription, read
    in one thread until the server says it is caught up, with nothing done per event
    (no queue, no decoding, no database). Prints the events and the seconds."""
    from esdbclient import EventStoreDBClient
    from esdbclient.events import CaughtUp

    client = EventStoreDBClient(os.environ["EVENTSTORE_URI"])
    events, started = 0, time.perf_counter()
    subscription = client.subscribe_to_all(filter_include=("payments-.*",),
                                           filter_by_stream_name=True, include_caught_up=True)
    for item in subscription:
        if isinstance(item, CaughtUp):
            break
        events += 1
    seconds = time.perf_counter() - started
    subscription.stop()
    client.close()
    print(json.dumps({"events": events, "seconds": seconds}), flush=True)


def raw_rate(uri: str) -> float:
    """Events/s of ``raw_subscriber`` on ``uri``."""
    done = subprocess.run([PYTHON, __file__, "--raw-subscriber"], cwd=ROOT, check=True,
                          env={**os.environ, "EVENTSTORE_URI": uri}, capture_output=True,
                          text=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["events"] / figures["seconds"]


def pause(uri: str, buffer: int) -> dict[str, int]:
    """Measure ``paused_subscriber``: its RSS once subscribed, its peak RSS once its
    buffer stopped growing, and the items in that buffer."""
    seen: dict[str, int] = {}

    def on_line(stream: str, line: str, now: float, rss: int) -> None:
        if stream == "stdout" and line.startswith("subscribed"):
            seen["start_rss"] = rss
        elif stream == "stdout" and line.startswith("{"):
            seen["buffered"] = json.loads(line)["buffered"]

    env = {**os.environ, "EVENTSTORE_URI": uri}
    watched = Watched([PYTHON, __file__, "--paused-subscriber", str(buffer)], env, on_line)
    if watched.returncode != 0 or "buffered" not in seen:
        raise SystemExit(f"the paused subscriber failed ({watched.returncode}):\n"
                         + "".join(watched.last_lines))
    return {**seen, "peak_rss": watched.peak}


def runner_with_buffer(buffer: int, argv: list[str]) -> None:
    """``manage.py <argv>`` with the EventStoreDB adapter's subscription buffer at
    ``buffer`` (its constructor's default, before anything constructs it)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paymentsite.settings")
    from django.core.management import execute_from_command_line

    from payments.eventstore.esdb import EventStoreDBEventStore

    defaults = EventStoreDBEventStore.__init__.__kwdefaults__ or {}
    if "subscription_buffer" not in defaults:
        raise SystemExit("EventStoreDBEventStore() takes no subscription_buffer any more")
    defaults["subscription_buffer"] = buffer
    execute_from_command_line(["manage.py", *argv])


def measure(*, events: int = 1_000_000, small: int = 10_000,
            unbounded: bool = False) -> dict[str, Any]:
    """Every figure of this benchmark, by name (bytes, seconds, events/s)."""
    from dataset import payments_for, write_payments

    from payments.eventstore.esdb import BUFFER

    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-catchup-") as name:
        folder = Path(name)
        template = folder / "template"
        template.mkdir()
        with step("migrate"):
            subprocess.run([PYTHON, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT,
                           env=runner_env(template, f"sqlite:///{template / 'unused.sqlite3'}"),
                           check=True)
        runs: dict[str, Catchup] = {}
        paused: dict[int, dict[str, int]] = {}
        loaded: dict[str, int] = {}
        raw = 0.0
        for key, size in (("small", small), ("large", events)):
            with double_with(payments_for(size)) as (uri, loaded[key]):
                if key == "large":
                    with step(f"esdbclient alone reads {loaded[key]:,} events from the double"):
                        raw = raw_rate(uri)
                with step(f"catch up {loaded[key]:,} events from the double"):
                    runs[key] = catch_up(folder, uri)
                if key == "large" and unbounded:
                    with step(f"the same, with a buffer of {UNBOUNDED:,} (before issue 11)"):
                        runs["unbounded"] = catch_up(folder, uri, buffer=UNBOUNDED)
                    for buffer in (BUFFER, UNBOUNDED):
                        with step(f"a subscriber that takes nothing, buffer {buffer:,}"):
                            paused[buffer] = pause(uri, buffer)
        with step(f"write {payments_for(events):,} payments into an embedded store"):
            store = folder / "events.sqlite3"
            _, loaded["embedded"] = write_payments(store, payments=payments_for(events))
        with step(f"catch up {loaded['embedded']:,} events from the embedded store"):
            runs["embedded"] = catch_up(folder, f"sqlite:///{store}")
    for key, run in runs.items():
        expected = loaded["large" if key == "unbounded" else key]
        if run.events != expected:
            raise SystemExit(f"{key}: the runner applied {run.events} of {expected} events")
    figures: dict[str, Any] = {"events": loaded["large"], "small_events": loaded["small"],
                               "raw_rate": raw}
    for key, run in runs.items():
        figures.update({f"{key}_{name}": value for name, value in asdict(run).items()})
        figures[f"{key}_rate"] = run.rate
    for buffer, held in paused.items():
        name = "paused_bounded" if buffer == BUFFER else "paused_unbounded"
        figures.update({f"{name}_{key}": value for key, value in held.items()})
    return figures


def report(f: dict[str, Any]) -> str:
    from payments.eventstore.esdb import BUFFER

    mib = 2**20
    lines = []
    for key, label in (("small", f"double, {f['small_events']:,} events"),
                       ("large", f"double, {f['events']:,} events"),
                       ("unbounded", f"double, {f['events']:,} events, buffer {UNBOUNDED:,}"),
                       ("embedded", f"embedded, {f['events']:,} events")):
        if f"{key}_events" in f:
            lines.append(
                f"{label:<48} peak RSS {f[f'{key}_peak_rss'] / mib:7.1f} MiB"
                f" (at its start {f[f'{key}_start_rss'] / mib:5.1f} MiB);"
                f" {f[f'{key}_rate']:8,.0f} events/s ({f[f'{key}_seconds']:.1f} s,"
                f" {f[f'{key}_wall']:.1f} s with start-up;"
                f" {f[f'{key}_events'] / max(f[f'{key}_batches'], 1):,.0f} events a batch)")
    lines.append(f"peak RSS, {f['events']:,} / {f['small_events']:,} events:"
                 f" {f['large_peak_rss'] / f['small_peak_rss']:.2f} (target <= 1.2)")
    if "unbounded_peak_rss" in f:
        lines.append(f"the same with the buffer at {UNBOUNDED:,} (before issue 11):"
                     f" {f['unbounded_peak_rss'] / f['small_peak_rss']:.2f}")
    lines.append(f"esdbclient alone, {f['events']:,} events from the double:"
                 f" {f['raw_rate']:8,.0f} events/s (the most any consumer of it reaches)")
    lines.append(f"events/s, runner / esdbclient alone on the double:"
                 f" {f['large_rate'] / f['raw_rate']:.2f}")
    lines.append(f"events/s, double / embedded store: {f['large_rate'] / f['embedded_rate']:.2f}"
                 " (the double, a Python gRPC server, is the slower side)")
    for name, buffer in (("paused_bounded", BUFFER), ("paused_unbounded", UNBOUNDED)):
        if f"{name}_peak_rss" in f:
            lines.append(
                f"a subscriber that takes nothing, {f['events']:,} events, buffer {buffer:,}:"
                f" {f[f'{name}_buffered']:,} items buffered, peak RSS"
                f" {f[f'{name}_peak_rss'] / mib:.1f} MiB"
                f" ({(f[f'{name}_peak_rss'] - f[f'{name}_start_rss']) / mib:+.1f} MiB"
                " since subscribed)")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--raw-subscriber"]:
        raw_subscriber()
        return
    if sys.argv[1:2] == ["--paused-subscriber"]:
        paused_subscriber(int(sys.argv[2]))
        return
    if sys.argv[1:2] == ["--runner-with-buffer"]:
        runner_with_buffer(int(sys.argv[2]), sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events of the large catch-up (about: whole payment histories)")
    parser.add_argument("--small", type=int, default=10_000,
                        help="events of the small catch-up, the RSS baseline")
    parser.add_argument("--unbounded", action="store_true",
                        help=f"also measure the large store with a buffer of {UNBOUNDED:,}"
                             " events (as before issue 11), and a paused subscriber")
    args = parser.parse_args()
    figures = measure(events=args.events, small=args.small, unbounded=args.unbounded)
    say(json.dumps(figures))
    print(report(figures))


if __name__ == "__main__":
    main()

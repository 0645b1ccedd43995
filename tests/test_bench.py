"""``bench/run.py --quick`` runs every benchmark end to end and reports every figure.

CI runs it so that the benchmarks keep working; the figures of a shared CI machine
are not checked against the targets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SAME = r"the same(\s|$)"  # a row with the figure of the row above, against another baseline
# One pattern per row of the table, in order.
ROWS = [
    r"command service, sequential",
    r"the same, with its JSON log line per command",
    r"the same, traced: a span per command",
    r"its commits alone: the events schema",
    r"service in-process, 16 threads, durable",
    r"service in-process, sequential, against the eventsourcing peer",
    r"service in-process, sequential, against the eventsourcing peer",
    r"rebuild both projections, one process each",
    r"rebuild both projections, one after the other",
    r"rebuild PaymentView alone \(--reset\), one process",
    r"rebuild both projections at once, one process each",
    r"rebuild beside the live tables \(--rebuild\), one after the other",
    r"live: from append to PaymentView row committed, p99",
    r"HTTP commands \(POST /api/payments/…\), 16 clients",
    SAME,  # against the DRF floor with a durable commit
    SAME,  # against the service in-process
    r"HTTP commands, p99",
    SAME,  # against the durable floor's p99
    SAME,  # against the p50
    r"HTTP GET /api/payments/\{id\}/",
    SAME,  # against find_payment in-process
    r"HTTP settles on one payment, 16 clients at once: accepted",
    r"HTTP settles on one payment, p99",
    r"read your writes: GET /api/payments/\?after= at once after a create, p99",
    r"scale: rebuild [\d,]+ payments, one process each",
    r"scale: rebuild [\d,]+ payments, wall time",
    r"scale: GET /api/payments/\?status=settled, [\d,]+ payments, p99",
    r"scale: GET /api/payments/\?status=settled&bank_name=…, [\d,]+ payments, p99",
    r"scale: admin payment list, [\d,]+ payments, p99",
    r"scale: admin payment list \?status__exact=settled, [\d,]+ payments, p99",
    r"catch-up of [\d,]+ events from the EventStoreDB double: runner's peak RSS",
    r"catch-up of [\d,]+ events from the EventStoreDB double(?!:)",
    r"catch-up of [\d,]+ events from the EventStoreDB double(?!:)",
]
NUMBER = re.compile(r"\d[\d,]*(\.\d+)?")


@pytest.mark.timeout(300)  # about a minute on an idle 2-core machine; CI may be busier
def test_quick_run_reports_every_figure_and_writes_its_section(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:run -->\nold table\n<!-- /bench:run -->\n\nkept\n")

    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--write", "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=290,
    )

    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    printed = [line for line in done.stdout.splitlines()
               if any(re.match(pattern, line) for pattern in ROWS)]
    assert len(printed) == len(ROWS), done.stdout
    written = doc.read_text()
    assert written.startswith("# Benchmarks\n\n<!-- bench:run -->\n")
    assert written.endswith("<!-- /bench:run -->\n\nkept\n")
    assert "old table" not in written
    table = [line for line in written.splitlines() if line.startswith("| ")][2:]
    assert len(table) == len(ROWS), written
    for pattern, line in zip(ROWS, table, strict=True):
        name, figure, unit, _, baseline, ratio, target, met = (
            cell.strip() for cell in line.strip("|").split(" | ")
        )
        assert re.match(pattern, name), line
        assert NUMBER.fullmatch(figure), line
        assert NUMBER.fullmatch(baseline), line
        assert NUMBER.fullmatch(ratio), line
        assert unit, line
        assert target, line
        assert met in (("n/a",) if "reference" in target else ("yes", "NO")), line

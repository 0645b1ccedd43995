"""`manage.py run_projection` as a person at a terminal meets it (issue 14, finding 3).

--reset beside an active runner says so and resets nothing, instead of waiting for
ever; the closing lines give the stored checkpoint; the progress bar is not broken by
the runner's per-batch log lines; a rebuild that goes on following says it caught up;
a following runner's line never reads "at position 73 of 0".
"""

from __future__ import annotations

import logging
from io import StringIO

import pytest
from django.core.management import CommandError
from django.core.management.base import OutputWrapper

from projections.locks import try_lock, unlock
from projections.management.commands.run_projection import _Reporter
from projections.models import Checkpoint, PaymentView
from projections.runner import Progress
from tests.test_runner import run_projection, snapshot, some_payments

pytestmark = pytest.mark.django_db(transaction=True)


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("projection", ["payment", "all"])
def test_reset_beside_an_active_runner_names_it_and_resets_nothing(projection: str) -> None:
    some_payments(3)
    run_projection("all", "--once")
    before = snapshot()
    lock = try_lock("payment")  # the runner of dev.py run, say
    assert lock is not None
    try:
        with pytest.raises(CommandError) as refused:
            run_projection(projection, "--reset", "--once")
    finally:
        unlock("payment", lock)
    assert str(refused.value) == (
        "payment: another runner is active (python3 dev.py run, or another run_projection)."
        " Stop it first: --reset clears the read model that it writes. Nothing was reset."
        " (--rebuild builds a new one beside it instead, and needs no stop.)")
    assert snapshot() == before


def test_the_closing_lines_give_the_stored_checkpoint() -> None:
    some_payments(2)  # 3 events each
    last_line = run_projection("payment", "--once").splitlines()[-1]
    assert last_line == "payment: applied 6 events, checkpoint at 6"
    # Nothing new: nothing applied, and the checkpoint is where it was, not 0.
    assert run_projection("payment", "--once") == "payment: applied 0 events, checkpoint at 6\n"
    assert Checkpoint.objects.get(name="payment").position == 6
    assert PaymentView.objects.count() == 2


def test_while_the_bar_is_drawn_only_warnings_of_the_runner_show() -> None:
    reporter = _Reporter(OutputWrapper(Terminal()), show_bar=True, once=True)
    runner_log = logging.getLogger("projections.runner")
    level = runner_log.level
    with reporter.quiet_batches():
        assert not runner_log.isEnabledFor(logging.INFO)
        assert runner_log.isEnabledFor(logging.WARNING)
    assert runner_log.level == level
    plain = _Reporter(OutputWrapper(StringIO()), show_bar=True, once=True)  # not a terminal
    with plain.quiet_batches():
        assert runner_log.level == level


def test_a_rebuild_that_goes_on_following_says_when_it_caught_up() -> None:
    screen = Terminal()
    reporter = _Reporter(OutputWrapper(screen), show_bar=True, once=False)
    reporter.report("payment", Progress(applied=10, start=0, position=10, head=20))
    assert "caught up" not in screen.getvalue()
    reporter.report("payment", Progress(applied=20, start=0, position=20, head=20))
    assert screen.getvalue().endswith(
        "\nrebuilt: payment caught up; following new events until Ctrl-C (--once exits here)\n")
    drawn = len(screen.getvalue())
    reporter.report("payment", Progress(applied=21, start=0, position=21, head=21))
    # Following now: plain lines, no bar redrawn over what the runner prints.
    assert screen.getvalue()[drawn:].startswith(
        "payment: 21 events applied, at position 21 caught up")


def test_a_following_runner_line_never_reads_of_0() -> None:
    out = StringIO()
    reporter = _Reporter(OutputWrapper(out), show_bar=False, once=False)
    reporter.report("payment", Progress(applied=73, start=0, position=73, head=0))
    assert out.getvalue().startswith("payment: 73 events applied, at position 73 caught up, ")
    later = StringIO()
    reporter = _Reporter(OutputWrapper(later), show_bar=False, once=False)
    reporter.report("payment", Progress(applied=5, start=0, position=5, head=9))
    assert later.getvalue().startswith("payment: 5 events applied, at position 5 of 9, ")


def test_a_batch_too_large_for_one_postgresql_statement_is_refused() -> None:
    with pytest.raises(CommandError) as refused:
        run_projection("all", "--once", "--batch-size", "10001")
    assert str(refused.value) == (
        "--batch-size must be at most 10,000: a batch's rows are written in statements that"
        " must stay under PostgreSQL's 65,535 parameters")
    assert run_projection("all", "--once", "--batch-size", "10000").endswith(
        "checkpoint at 0\n")

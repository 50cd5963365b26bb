"""`make chaos` in `make test`: 60 seconds of load while every service is killed three times
and nats-server and the MQTT broker are restarted both ways; nothing may be lost,
duplicated, stuck or recorded other than the devices answered, and the views must equal a
fresh replay (tests/chaos/runner.py, docs/operations.md "Chaos")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.runner import Options, run

pytestmark = pytest.mark.e2e

# `make chaos` for 60 s rather than 300, with half its fleet and half its rate (CI machines
# vary; the exactness checked does not depend on the rate): the same faults, one at a time
# (the load goes on longer when the stack is slow to recover between them). Measured on 2
# cores at 10/s: 75-90 s in all (61-66 s of load); up to ~170 s while others' tests shared
# the cores. Most of the CPU is the services starting again after each kill.
TEST_RUN = Options(duration=60, devices=100, rate=25)


@pytest.mark.timeout(600)
def test_sixty_seconds_of_chaos_leave_an_exact_record(tmp_path: Path) -> None:
    verdict = run(TEST_RUN, tmp_path / "chaos")
    report = "\n".join(verdict.report())
    print(report)  # notes included: the recovery waits, the fault timeline
    assert verdict.accepted >= TEST_RUN.rate * TEST_RUN.duration * 0.9, report
    expected = (
        f"chaos: accepted={verdict.accepted} lost=0 duplicated=0 stuck=0 wrong=0 views_equal=yes"
    )
    assert verdict.line() == expected, report

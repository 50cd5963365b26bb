"""The fuzz stage's figures: every fuzz test records what it ran here, and pytest's summary
prints them (operations covered, cases run, answers by status, 5xx count), so a run's
numbers can be quoted without reading its logs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class FuzzFigures:
    documented: set[str] = field(default_factory=set)
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)
    rounds_cut: int = 0  # stateful rounds Hypothesis ended early (test_http_schemathesis.py)

    def record(self, stage: str, operation: str, status: int) -> None:
        self.operations.add(operation)
        self.cases += 1
        self.statuses[status] += 1
        self.stages[stage] += 1

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def lines(self) -> list[str]:
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        by_stage = ", ".join(f"{s}: {n}" for s, n in sorted(self.stages.items()))
        return [
            f"operations covered: {len(self.operations)} of {len(self.documented)}",
            f"cases run: {self.cases} ({by_stage})",
            f"5xx answers: {self.server_errors}",
            f"answers by status: {by_status}",
            f"stateful rounds ended early by Hypothesis (live state): {self.rounds_cut}",
        ]


FIGURES = FuzzFigures()


@pytest.fixture(scope="session")
def fuzz_figures() -> FuzzFigures:
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES.cases:
        terminalreporter.section("HTTP fuzzing (schemathesis)")
        for line in FIGURES.lines():
            terminalreporter.write_line(line)

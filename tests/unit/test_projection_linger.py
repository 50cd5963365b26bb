"""The projection's linger (`baton_api.projector.linger`): how long after a step's start
the next may start, from the events that step read. Idle, a command's events wait at most
the minimum; under load, each batch makes the next longer until the maximum, so the
statements every step costs are shared by many commands."""

from __future__ import annotations

import pytest

from baton_api.projector import LINGER_MAX_S, LINGER_MIN_S, linger

STEP_S = 0.004  # what a step itself takes, about, on PostgreSQL


def settled(events_per_s: float, steps: int = 50) -> float:
    """The linger the loop settles at when events keep coming at `events_per_s`: each step
    reads what came during the last linger and step."""
    read = 1
    for _ in range(steps):
        read = round(events_per_s * (linger(read) + STEP_S))
    return linger(read)


@pytest.mark.parametrize("events", [0, 1, 2])
def test_a_step_of_a_few_events_holds_the_next_back_the_least(events: int) -> None:
    assert linger(events) == LINGER_MIN_S


def test_the_linger_grows_with_the_batch_up_to_its_bound() -> None:
    values = [linger(n) for n in range(0, 1000)]
    assert values == sorted(values)
    assert values[-1] == LINGER_MAX_S


def test_one_command_every_so_often_waits_the_least() -> None:
    # A command's seven events, a few at a time, ten commands a second: 70 events/s.
    assert settled(70) == LINGER_MIN_S


@pytest.mark.parametrize("events_per_s", [600, 1000, 7000])
def test_under_load_the_steps_space_out_to_the_bound(events_per_s: float) -> None:
    assert settled(events_per_s) == LINGER_MAX_S

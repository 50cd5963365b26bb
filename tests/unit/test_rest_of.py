"""`rest_of`: what is left of a gap is slept, a gap already past costs nothing (the
projector's 4 ms between steps and the webhook sender's 50 ms between rounds)."""

from __future__ import annotations

import time

from baton_platform.lifecycle import rest_of


async def test_what_is_left_of_the_gap_is_slept() -> None:
    since = time.monotonic()
    await rest_of(0.2, since)
    assert time.monotonic() - since >= 0.2


async def test_a_gap_already_past_costs_nothing() -> None:
    before = time.monotonic()
    await rest_of(0.2, before - 10)
    await rest_of(0.2, float("-inf"))
    assert time.monotonic() - before < 0.1

"""Which requests the broker may have taken (baton_device_bridge.handover): the hold each
lifecycle event keeps on the watermark until it is acknowledged, and what counts as
"may have been taken" for a request that comes back past its deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from baton_device_bridge.handover import Handovers

STORED = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
NOW = STORED + timedelta(seconds=2)


class Holds:
    def __init__(self) -> None:
        self.held: dict[object, datetime] = {}

    def hold(self, key: object, since: datetime) -> None:
        self.held[key] = since

    def release(self, key: object) -> None:
        del self.held[key]


def test_a_first_delivery_holds_from_its_handling_and_is_not_taken_yet() -> None:
    holds = Holds()
    attempt = Handovers(holds).begin(5, earlier=False, stored_at=STORED, now=NOW)
    assert (attempt.since, attempt.maybe_taken) == (NOW, False)
    assert holds.held == {5: NOW}


def test_an_event_an_earlier_process_had_may_have_been_sent_since_it_was_stored() -> None:
    holds = Holds()
    attempt = Handovers(holds).begin(5, earlier=True, stored_at=STORED, now=NOW)
    assert (attempt.since, attempt.maybe_taken) == (STORED, True)
    assert holds.held == {5: STORED}


def test_a_redelivery_in_the_same_process_keeps_its_first_attempt_and_hold() -> None:
    holds = Holds()
    handovers = Handovers(holds)
    first = handovers.begin(5, earlier=False, stored_at=STORED, now=NOW)
    first.maybe_taken = True  # written on a connection lost before the PUBACK
    again = handovers.begin(5, earlier=True, stored_at=STORED, now=NOW + timedelta(seconds=9))
    assert again is first
    assert (again.since, again.maybe_taken) == (NOW, True)
    assert holds.held == {5: NOW}


def test_an_acknowledged_event_releases_its_hold_once() -> None:
    holds = Holds()
    handovers = Handovers(holds)
    handovers.begin(5, earlier=False, stored_at=STORED, now=NOW)
    handovers.begin(6, earlier=False, stored_at=STORED, now=NOW)
    handovers.done(5)
    handovers.done(5)  # no second release
    assert holds.held == {6: NOW}
    assert len(handovers) == 1

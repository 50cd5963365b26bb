"""How a service logs what nats-server tells it (baton_platform.nats.log_nats_error): a
permissions violation is a bug (error), except a reply refused after a reconnect, which the
requester retries (warning); connection trouble is a warning."""

from __future__ import annotations

import logging

import pytest

from baton_platform.nats import log_nats_error


@pytest.mark.parametrize(
    ("message", "level"),
    [
        ('nats: permissions violation for publish to "baton.v1.events.x"', logging.ERROR),
        ('nats: permissions violation for subscription to "baton.>"', logging.ERROR),
        (
            'nats: permissions violation for publish to "_inbox.d8llo1xfxiez5f08tz3gan.d8llo1"',
            logging.WARNING,
        ),
        ("nats: unexpected EOF", logging.WARNING),
    ],
)
async def test_each_error_is_logged_at_what_it_means(
    message: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="baton_platform.nats")
    await log_nats_error(Exception(message))
    [record] = [r for r in caplog.records if r.name == "baton_platform.nats"]
    assert record.levelno == level
    assert message in record.getMessage()

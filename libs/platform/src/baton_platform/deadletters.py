"""Dead-lettering: a message a service gives up on is kept, with why, never silently dropped."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from baton_contracts.nats import (
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_SUBJECT_HEADER,
    DEAD_LETTERS_STREAM,
    dead_letter_subject,
)
from baton_platform.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)


async def dead_letter(
    js: JetStreamContext, service: str, subject: str, data: bytes, reason: str
) -> None:
    DEAD_LETTERS.labels(service=service, subject=subject).inc()
    log.error("dead-lettered a message from %s: %s", subject, reason)
    await js.publish(
        dead_letter_subject(service),
        data,
        stream=DEAD_LETTERS_STREAM,
        headers={DEAD_LETTER_REASON_HEADER: reason[:1000], DEAD_LETTER_SUBJECT_HEADER: subject},
    )

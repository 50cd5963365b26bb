"""Device reports into JetStream (BATON_REPORTS), the bridge's one way of telling the dispatcher.

Both directions end here: a `published` report after the broker took a request, an `answer`
report for each device answer, a `presence` or `state` report for each status or state
message. `Nats-Msg-Id` = `report_id`, so a report sent twice (a
redelivered event, an answer the broker delivered again) is stored once within the stream's
duplicate window; the dispatcher de-duplicates by `report_id` after that.
"""

from __future__ import annotations

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError

from baton_contracts.nats import (
    REPORTS_STREAM,
    DeviceReport,
    PresenceReport,
    StateReport,
    report_subject,
)
from baton_platform import tracing

# Short: answers are stored in order, so one publish waiting out a NATS restart holds back every
# answer behind it (seen in chaos runs: 5 s of stalled answers, deadlines firing meanwhile). A
# retry is harmless: `Nats-Msg-Id` stores a report once.
PUBLISH_TIMEOUT = 1.0


class ReportNotStoredError(Exception):
    """JetStream did not confirm the report (NATS down, no stream yet, ...): try again."""


class ReportRefusedError(Exception):
    """JetStream will never take this report (too large, refused by the stream): give up."""


class ReportSink:
    def __init__(self, js: JetStreamContext, timeout: float = PUBLISH_TIMEOUT) -> None:
        self._js = js
        self._timeout = timeout

    async def store(self, report: DeviceReport | PresenceReport | StateReport) -> None:
        """Returns once JetStream has acknowledged (stored) the report."""
        try:
            await self._js.publish(
                report_subject(report.device_id),
                report.model_dump_json().encode(),
                timeout=self._timeout,
                stream=REPORTS_STREAM,
                # The trace of the execution goes on in the dispatcher that applies it.
                headers=tracing.inject({"Nats-Msg-Id": report.report_id}),
            )
        except nats.errors.MaxPayloadError as exc:
            raise ReportRefusedError(f"larger than the server's max payload: {exc}") from exc
        except ServiceUnavailableError as exc:  # JetStream itself is not ready yet
            raise ReportNotStoredError(str(exc) or type(exc).__name__) from exc
        except APIError as exc:  # the stream answered and said no: retrying changes nothing
            raise ReportRefusedError(str(exc) or type(exc).__name__) from exc
        except nats.errors.Error as exc:  # timeout, no responders, connection closed, ...
            raise ReportNotStoredError(str(exc) or type(exc).__name__) from exc

"""The MQTT accounts of the devices a stored catalog change moved, taken back whichever way
the change came: through the api's routes, or straight to the dispatcher over NATS
(`baton.v1.catalog.change`, the `ops` role), which never passes the api.

The catalog's events are relayed to `BATON_EVENTS` like every stored event. The api
replicas read them through one durable consumer (`CATALOG_DURABLE`, a queue group): each
event goes to one replica, and one that stopped, or was never running, misses none. The
catalog just before the event and just after it, read back from the event store by the
event's version, say which devices it dropped or moved to other topics, by the rules the
routes use before a change (baton_api.moved). Of those, an account is taken back when it
holds other topics than the ones the device has in the catalog now: an account issued after
the change, on its new topics, stays (a `POST .../credentials` right after a `PUT` is not
undone moments later).

A broker that cannot be asked leaves the event unacknowledged: it comes again after
`RETRY_S`, the events after it waiting behind it (one unacknowledged at a time), so none is
lost. Taking an account back twice is harmless (the routes did it already for their own
changes), so an event delivered twice is too.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from baton_api.device_accounts import AccountsUnavailableError, DeviceAccounts
from baton_api.moved import account_topics, moved_devices
from baton_contracts.accounts import device_username
from baton_contracts.nats import CATALOG_EVENTS, EVENTS_STREAM, LifecycleEvent, event_subject
from baton_domain.application import Executions
from baton_domain.catalog_document import CATALOG_ID
from baton_platform.consumers import DurableConsumer
from baton_platform.nats_access import CATALOG_DURABLE

log = logging.getLogger(__name__)

RETRY_S = 5.0  # a broker that could not be asked is asked again after this
SUBJECTS = tuple(sorted(event_subject(CATALOG_ID, t) for t in CATALOG_EVENTS))


class MovedAccounts:
    def __init__(self, executions: Executions, accounts: DeviceAccounts) -> None:
        self._executions = executions
        self._accounts = accounts
        self._consumer = DurableConsumer(
            EVENTS_STREAM, CATALOG_DURABLE, SUBJECTS, self.handle, max_ack_pending=1
        )

    async def start(self, js: JetStreamContext) -> None:
        """Until it is started: the dispatcher may not have made the stream yet."""
        await self._consumer.start(js, patient=True)

    async def stop(self) -> None:
        await self._consumer.stop()

    async def handle(self, msg: Msg) -> None:
        try:
            event = LifecycleEvent.model_validate_json(msg.data)
        except ValidationError as exc:
            # Only the dispatcher's relay publishes there: nothing to take back, and it
            # would never read better.
            log.error("unreadable catalog event on %s dropped: %s", msg.subject, exc)
            await msg.ack()
            return
        try:
            await self.take_back(event)
        except AccountsUnavailableError as exc:
            log.warning(
                "catalog change %d: MQTT accounts not taken back yet (%s); again in %.0f s",
                event.version,
                exc,
                RETRY_S,
            )
            await msg.nak(delay=RETRY_S)
            return
        await msg.ack()

    async def take_back(self, event: LifecycleEvent) -> list[str]:
        """Take back the accounts `event` (a catalog event) left on topics their devices no
        longer have; returns those devices. Raises AccountsUnavailableError."""
        if event.execution_id != CATALOG_ID:
            return []
        before, after = await asyncio.to_thread(self._executions.catalog_change_at, event.version)
        now = await asyncio.to_thread(lambda: self._executions.catalog)
        taken = []
        for device_id in moved_devices(before, after):
            username = device_username(device_id)
            held = await self._accounts.topics(username)
            if held is None:
                continue  # none to take back
            own = account_topics(now, device_id)
            if own is not None and held.same_as(own):
                continue  # issued on the topics the device has now
            await self._accounts.revoke(username)
            taken.append(device_id)
        if taken:
            log.info("catalog change %d: took back the MQTT accounts of %s", event.version, taken)
        return taken

"""The api replicas' NATS edge for the views: the one that projects announces each batch it
committed (`ViewsAdvanced` on `baton.v1.views.advanced`, core NATS); every replica hears
them and wakes its waiters (`ProjectionRunner.heard`)."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from baton_api.nats_link import NatsLink
from baton_api.projector import Announce, ProjectionRunner
from baton_contracts.nats import VIEWS_ADVANCED_SUBJECT, ViewsAdvanced
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)


def announcer(link: NatsLink) -> Announce:
    """Publish an advance on the link's connection (not connected: nobody hears it, and
    the other replicas read the views' position instead)."""

    async def announce(message: ViewsAdvanced) -> None:
        if link.connected:
            assert link.client is not None
            await link.client.publish(VIEWS_ADVANCED_SUBJECT, message.model_dump_json().encode())

    return announce


async def hear_advances(client: Client, runner: ProjectionRunner) -> Subscription:
    async def on_advance(msg: Msg) -> None:
        try:
            message = ViewsAdvanced.model_validate_json(msg.data)
        except ValidationError as exc:
            REJECTED_MESSAGES.labels("api", "malformed").inc()
            log.warning("unreadable views advance dropped: %d error(s)", exc.error_count())
            return
        runner.heard(message)

    return await client.subscribe(VIEWS_ADVANCED_SUBJECT, cb=on_advance)

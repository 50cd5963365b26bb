"""The cluster chaos run's plan: one replica each of the dispatcher and the bridge stays
down past its leases' TTL, so their partitions and slot are taken over under load."""

from __future__ import annotations

import random

from baton_platform.leases import TTL_S
from tests.chaos.faults import TAKEOVER_DOWN_S, plan, with_takeovers


def test_the_dispatcher_and_the_bridge_stay_down_past_their_leases_the_rest_briefly() -> None:
    kinds = [
        ("dispatcher-2", "SIGKILL"),
        ("device-bridge-1", "SIGKILL"),
        ("api-1", "SIGKILL"),
        ("timeout-scheduler-2", "SIGKILL"),
        ("nats-n2", "SIGKILL"),
        ("postgres", "SIGINT"),
    ]
    planned = with_takeovers(plan(random.Random(7), 40, kinds, max_down=2.0))
    down = {fault.target: fault.down for fault in planned}
    assert down["dispatcher-2"] == down["device-bridge-1"] == TAKEOVER_DOWN_S
    assert TAKEOVER_DOWN_S > 2 * TTL_S  # taken over, with time to spare, before the return
    assert all(down[t] <= 2.0 for t in ("api-1", "timeout-scheduler-2", "nats-n2", "postgres"))

"""The whole stack with TLS on NATS (BATON_NATS_CA_FILE) and on MQTT (mqtts), with a CA the
test makes: a command still goes to its device and back, and a NATS client that does not
speak TLS, or does not trust the CA, is refused (docs/security.md, "Running behind TLS")."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import nats
import pytest

from baton_cli.localstack import Stack, find_binary
from baton_platform.nats_access import OPS
from tests.certificates import make_ca
from tests.e2e.conftest import Baton, make_stack, running

pytestmark = pytest.mark.skipif(
    find_binary("mosquitto") is None, reason="the mqtts listener is Mosquitto's"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tls")
    tls = make_ca(tmp / "tls")
    stack = make_stack(tmp / "stack", broker="mosquitto", mqtt_tls=tls, nats_tls=tls)
    with running(stack) as started:
        yield started


def test_a_command_goes_round_over_tls_on_nats_and_mqtt(stack: Stack) -> None:
    baton = Baton(stack)
    sent = baton.send("demo-thermostat-1", "set_temperature", {"value": 23})
    assert sent.status_code == 201, sent.text
    done = baton.wait_for(sent.json()["id"], {"SUCCEEDED"})
    assert done["result"] == {"current_temperature": 23}


def test_nats_refuses_a_client_without_tls_or_without_the_ca(stack: Stack) -> None:
    assert stack.nats_tls is not None
    url = stack.nats_url_as(OPS)

    async def connects(**options: object) -> bool:
        try:
            client = await nats.connect(
                url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0, **options
            )
        except Exception:
            return False
        await client.close()
        return True

    trusted = ssl.create_default_context(cafile=str(stack.nats_tls.ca_file))
    assert asyncio.run(connects(tls=trusted))
    assert not asyncio.run(connects(tls=ssl.create_default_context()))
    assert not asyncio.run(connects())

"""The api over HTTPS (BATON_API_TLS_CERT_FILE / _KEY_FILE), with a CA this test makes: a
client that trusts the CA is served, plain HTTP and a client that does not trust it are not
(docs/security.md, "Running behind TLS")."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.certificates import make_ca
from tests.e2e.conftest import API_KEY, dump_logs, make_stack


def test_the_api_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    tls = make_ca(tmp_path / "tls")
    stack = make_stack(
        tmp_path / "stack",
        simulate=False,
        extra_env={
            "BATON_API_TLS_CERT_FILE": str(tls.cert_file),
            "BATON_API_TLS_KEY_FILE": str(tls.key_file),
        },
    )
    try:
        stack.start_infrastructure()
        stack.start("dispatcher")
        stack.start("api")
        url = f"https://localhost:{stack.api_port}"
        trusted = ssl.create_default_context(cafile=str(tls.ca_file))
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/ready", verify=trusted, timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, dump_logs(stack)
        listed = httpx.get(
            f"{url}/v1/executions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            verify=trusted,
        )
        assert listed.status_code == 200, listed.text
        with pytest.raises(httpx.ConnectError):  # the system's CAs do not know ours
            httpx.get(f"{url}/health", timeout=5)
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port
            httpx.get(f"http://localhost:{stack.api_port}/health", timeout=5)
    finally:
        stack.stop_all()

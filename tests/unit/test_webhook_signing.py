"""Webhook signatures (what a receiver checks), the retries' backoff, the webhook targets
refused (SSRF), and the Last-Event-ID a live stream resumes after."""

from __future__ import annotations

import asyncio

import pytest

from baton_api.live import resume_position
from baton_api.problems import ProblemError
from baton_api.webhooks.delivery import backoff
from baton_api.webhooks.targets import TargetRefused, check_target, check_url, is_public
from baton_contracts.webhooks import sign, verify

SECRET = "whsec_test"
BODY = b'{"execution_id":"x","status":"SUCCEEDED"}'


def test_a_signature_is_hmac_sha256_over_the_time_and_the_body() -> None:
    import hashlib
    import hmac

    header = sign(SECRET, 1_700_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header, BODY, now=1_700_000_010)


@pytest.mark.parametrize(
    ("secret", "body", "now", "header"),
    [
        ("whsec_other", BODY, 1_700_000_000, None),  # another secret
        (SECRET, BODY + b" ", 1_700_000_000, None),  # another body
        (SECRET, BODY, 1_700_000_301, None),  # too old: a replay
        (SECRET, BODY, 1_699_999_699, None),  # from the future
        (SECRET, BODY, 1_700_000_000, "t=1700000000"),  # no v1
        (SECRET, BODY, 1_700_000_000, "v1=abc"),  # no t
        (SECRET, BODY, 1_700_000_000, "t=soon,v1=abc"),
        (SECRET, BODY, 1_700_000_000, ""),
    ],
)
def test_a_wrong_signature_is_refused(
    secret: str, body: bytes, now: int, header: str | None
) -> None:
    signed = header if header is not None else sign(SECRET, 1_700_000_000, BODY)
    assert not verify(secret, signed, body, now=now)


def test_backoff_doubles_up_to_the_maximum_with_equal_jitter() -> None:
    lows = [backoff(n, 1.0, 60.0, rand=lambda: 0.0) for n in range(1, 10)]
    highs = [backoff(n, 1.0, 60.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert highs == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert lows == [h / 2 for h in highs]
    assert 0.5 <= backoff(1, 1.0, 60.0) <= 1.0


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com",
        "http://",
        "https://user:pw@example.com/",
        "http://example.com:99999/",
        "http://example.com/" + "x" * 2048,
        "javascript:alert(1)",
    ],
)
def test_only_plain_http_urls_are_targets(url: str) -> None:
    with pytest.raises(TargetRefused):
        check_url(url)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1",
     "fe80::1", "fc00::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1",
     # IPv4 inside IPv6, delivered there by a translator or a tunnel: IPv4-compatible,
     # NAT64 (169.254.169.254, 10.0.0.1), 6to4 (127.0.0.1), Teredo (client 192.168.1.1)
     "::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1", "64:ff9b:1::1",
     "2002:7f00:1::", "2001:0:5ef5:79fd:0:0:3f57:fefe",
     "192.0.0.8"],  # IETF protocol assignments
)  # fmt: skip
def test_private_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


def test_public_addresses_are() -> None:
    assert is_public("93.184.216.34") and is_public("2606:2800:220:1::1")
    assert is_public("64:ff9b::5db8:d822")  # NAT64 to 93.184.216.34


def test_public_refuses_loopback_targets_and_loopback_only_those() -> None:
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/"):
        with pytest.raises(TargetRefused, match="non-public"):
            asyncio.run(check_target(url, "public"))
        asyncio.run(check_target(url, "loopback"))
        asyncio.run(check_target(url, "any"))
    for url in ("http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(TargetRefused, match="non-loopback"):
            asyncio.run(check_target(url, "loopback"))
        with pytest.raises(TargetRefused, match="non-public"):
            asyncio.run(check_target(url, "public"))


def test_last_event_id_is_a_position() -> None:
    assert resume_position(None, None) is None
    assert resume_position("42", None) == 42
    assert resume_position(None, "7") == 7
    assert resume_position("5", "9") == 5  # the header wins
    for bad in ("abc", "-1", "1.5", "", "١٢", "9" * 19):
        with pytest.raises(ProblemError):
            resume_position(bad, None)

"""Baton's NATS users: who a service connects as, the credentials file, the tenant binding."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from baton_platform.nats import identity, redacted, server_urls
from baton_platform.nats_access import (
    DISPATCHER,
    OPS,
    SERVICE_USERS,
    authorization_block,
    ensure_credentials,
    permissions_of,
    tenant_user,
)
from baton_platform.settings import Settings


def test_credentials_are_generated_once_for_every_user_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "nats" / "credentials.json"
    first = ensure_credentials(path, ["default"])
    assert set(first) == {*SERVICE_USERS, OPS, "tenant-default"}
    assert len(set(first.values())) == len(first)  # each its own password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Kept across restarts; a new tenant client is added beside the others.
    again = ensure_credentials(path, ["default", "acme"])
    assert {k: again[k] for k in first} == first
    assert "tenant-acme" in again


def test_a_tenant_id_that_is_not_one_subject_token_is_refused() -> None:
    for bad in ("a.b", "*", ">", "Acme", ""):
        with pytest.raises(ValueError):
            tenant_user(bad)


def test_a_service_connects_as_itself_with_its_password_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    passwords = ensure_credentials(path)
    who = identity(Settings(nats_credentials=path), DISPATCHER)
    assert (who.user, who.password) == (DISPATCHER, passwords[DISPATCHER])
    assert passwords[DISPATCHER] not in repr(who)
    assert who.options()["inbox_prefix"] == "_INBOX.dispatcher"


def test_explicit_user_and_password_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    ensure_credentials(path)
    settings = Settings(
        nats_credentials=path, nats_user="dispatcher-b", nats_password=SecretStr("pw")
    )
    who = identity(settings, DISPATCHER)
    assert (who.user, who.password) == ("dispatcher-b", "pw")


def test_a_user_missing_from_the_file_is_an_error_not_an_anonymous_connection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "credentials.json"
    ensure_credentials(path)
    with pytest.raises(ValueError, match="no NATS user 'billing'"):
        identity(Settings(nats_credentials=path, nats_user="billing"), DISPATCHER)


def test_credentials_in_a_url_stay_out_of_logs() -> None:
    assert redacted("nats://ops:s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redacted("nats://a:1@h1:4222,nats://b:2@h2:4222") == "nats://h1:4222,nats://h2:4222"


def test_a_tenant_client_may_publish_on_its_own_subject_only() -> None:
    permissions = permissions_of("tenant-default")
    assert permissions["publish"]["allow"] == ["baton.v1.tenants.default.commands.submit"]
    assert permissions["subscribe"]["allow"] == ["_INBOX.tenant-default.>"]
    assert "allow_responses" not in permissions


def test_the_server_config_lists_every_user_with_its_permissions() -> None:
    block = authorization_block({"dispatcher": "p1", "tenant-default": "p2"})
    assert block.startswith("authorization {")
    assert '"user": "dispatcher"' in block
    assert '"allow_responses": true' in block
    assert "baton.v1.tenants.default.commands.submit" in block


def test_a_cluster_url_is_every_node_for_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """BATON_NATS_URL may name a cluster's nodes, comma-separated: nats-py takes them as a
    list (as one string it would read a single malformed URL)."""
    monkeypatch.setenv("BATON_NATS_URL", "nats://h1:4222, nats://h2:4222,nats://h3:4222")
    monkeypatch.setenv("BATON_NATS_REPLICAS", "3")
    settings = Settings()
    assert server_urls(settings.nats_url) == ["nats://h1:4222", "nats://h2:4222", "nats://h3:4222"]
    assert server_urls("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert settings.nats_replicas == 3
    with pytest.raises(ValueError, match="names no server"):
        server_urls(" , ")


@pytest.mark.parametrize("replicas", ["0", "6"])
def test_a_replica_count_jetstream_cannot_keep_is_refused(
    monkeypatch: pytest.MonkeyPatch, replicas: str
) -> None:
    monkeypatch.setenv("BATON_NATS_REPLICAS", replicas)
    with pytest.raises(ValueError, match="nats_replicas"):
        Settings()


def test_events_acknowledged_before_disk_are_for_one_server_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-server keeps a stream in persist mode `async` on one server only: asked for
    with more replicas, the service stops at the start, naming both settings."""
    monkeypatch.setenv("BATON_NATS_EVENTS_PERSIST", "async")
    assert Settings().nats_events_persist == "async"
    monkeypatch.setenv("BATON_NATS_REPLICAS", "3")
    with pytest.raises(ValueError, match=r"BATON_NATS_EVENTS_PERSIST=async.*BATON_NATS_REPLICAS"):
        Settings()
    monkeypatch.setenv("BATON_NATS_EVENTS_PERSIST", "sometimes")
    monkeypatch.setenv("BATON_NATS_REPLICAS", "1")
    with pytest.raises(ValueError, match="nats_events_persist"):
        Settings()

"""Ports for a stack's servers: from below the ephemeral range (no client connection takes
its source port there), from this process's part of it, never handed out twice in a row."""

from __future__ import annotations

import pytest

from baton_cli import localstack
from baton_cli.localstack import free_port, free_ports, port_range


def test_ports_come_from_the_range_given_and_are_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATON_PORT_RANGE", "23000-23100")
    monkeypatch.setattr(localstack, "_handed", set())
    assert port_range() == (23000, 23100)
    ports = free_ports(10) + [free_port() for _ in range(10)]
    assert all(23000 <= port < 23100 for port in ports)
    assert len(set(ports)) == 20  # each one new, although each was closed at once


def test_without_a_range_given_ports_are_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BATON_PORT_RANGE", raising=False)
    low, high = port_range()
    assert high <= 32768  # Linux's default ip_local_port_range starts there
    assert low <= free_port() < high


def test_a_range_without_enough_free_ports_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_PORT_RANGE", "23200-23203")
    monkeypatch.setattr(localstack, "_handed", set())
    with pytest.raises(RuntimeError, match="fewer than 4 free ports"):
        free_ports(4)

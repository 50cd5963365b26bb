"""A tenant client's submit: its tenant comes from the subject, not the body."""

from __future__ import annotations

from baton_contracts.nats import SubmitCommand
from baton_platform.requests import tenant_submit


def test_a_tenant_submit_takes_tenant_and_principal_from_the_subject() -> None:
    forged = SubmitCommand(device_id="d", name="n", tenant="acme", principal="admin")
    bound = tenant_submit("baton.v1.tenants.default.commands.submit", forged)
    assert (bound.tenant, bound.principal) == ("default", "nats:default")
    assert (bound.device_id, bound.name) == ("d", "n")

"""The api's NATS edge: clients bound to one tenant submit here.

A `tenant-<t>` NATS user may publish only on `baton.v1.tenants.<t>.commands.submit`; the
api answers that subject (queue group `baton-api`) as it answers HTTP for people: the
tenant and who asked come from the subject (`nats:<t>`), never the message, the tenant's
cap of pending commands applies, then the dispatcher is asked as for any submit. The reply
is the dispatcher's own `ExecutionReply`, or a problem.
"""

from __future__ import annotations

from nats.aio.client import Client

from baton_api.service import ExecutionService
from baton_contracts.nats import TENANT_SUBMIT_SUBJECT, ExecutionReply, Problem, SubmitCommand
from baton_platform.requests import RequestEdges, tenant_inbox, tenant_submit

SERVICE = "api"
API_QUEUE = "baton-api"
TENANT_SUBMITS = TENANT_SUBMIT_SUBJECT.format(tenant="*")


async def serve_tenant_clients(client: Client, service: ExecutionService) -> RequestEdges:
    edges = RequestEdges(client, SERVICE, API_QUEUE)

    def refused(problem: Problem) -> ExecutionReply:
        return ExecutionReply(problem=problem)

    async def submit(command: SubmitCommand) -> ExecutionReply:
        return await service.forward(command)

    await edges.serve(
        TENANT_SUBMITS, SubmitCommand, submit, refused, bind=tenant_submit, replies=tenant_inbox
    )
    return edges

"""A nats-server node's `cluster` block: what the local stack's cluster (`localstack`) and a
deployment's nodes (`baton nats-setup --node`) both write, so they cannot differ.

Routes carry every message of every account without checking permissions, so they need a
password of their own: the same on every node of a cluster, and in no client's hands.
"""

from __future__ import annotations

import json

CLUSTER_NAME = "baton"
ROUTE_USER = "route"


def route_url(password: str, host: str, port: int) -> str:
    """A node's route as the other nodes dial it, with the route password."""
    return f"nats-route://{ROUTE_USER}:{password}@{host}:{port}"


def cluster_block(listen: str, password: str, routes: list[str]) -> str:
    """The `cluster` block of one node: where its route listens, the route password it asks
    of the others, and every node's route (itself included: nats-server skips its own)."""
    cluster = {
        "name": CLUSTER_NAME,
        "listen": listen,
        "authorization": {"user": ROUTE_USER, "password": password},
        "routes": routes,
    }
    return f"cluster {json.dumps(cluster, indent=2)}"

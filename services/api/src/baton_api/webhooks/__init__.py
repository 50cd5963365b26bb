"""Webhooks: subscriptions to execution changes, delivered by HTTP POST, signed, retried
with backoff, dead-lettered after the last attempt (docs/api.md, "Webhooks")."""

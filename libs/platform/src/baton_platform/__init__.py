"""Shared plumbing for Baton's services: settings, the event store, NATS, logging, metrics."""

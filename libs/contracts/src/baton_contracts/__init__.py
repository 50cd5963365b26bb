"""Every message Baton puts on a wire (NATS subjects, MQTT topics) as a typed model.

HTTP request/response schemas live in the api service; these are the wire contracts
documented in docs/nats-contract.md and docs/mqtt-contract.md.
"""

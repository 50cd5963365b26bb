"""The `baton` command line: send, events, replay, simulate, and the local dev stack."""

"""The dispatcher: the only writer of the command lifecycle, and the outbox relay."""

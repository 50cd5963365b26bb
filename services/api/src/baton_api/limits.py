"""How large a request may be (docs/api.md, "Limits").

Every write travels to the dispatcher as one NATS message, and the execution it creates
travels again as lifecycle events and replies carrying the same params. NATS refuses a
message over the server's `max_payload` (1 MiB by default) for good, so a body that could
only ever fail is refused up front with 413, never with a 503 "try again".
"""

from __future__ import annotations

# The HTTP request body, on every route (Litestar's `request_max_body_size`).
MAX_BODY_BYTES = 256 * 1024

"""The role each route needs, read from the routes themselves: the table in
docs/security.md is this module's output (tests/unit/test_role_matrix.py checks both)."""

from __future__ import annotations

from litestar import Litestar
from litestar.routes import HTTPRoute

from baton_api.auth import role_of
from baton_domain.tenants import Role

# Not in the table: open routes, and the console's pages, which take the same roles from a
# cookie and whose guards tests/unit/test_console.py checks (docs/console.md).
PUBLIC_PREFIXES = ("/health", "/ready", "/schema", "/console")


def route_roles(app: Litestar) -> list[tuple[str, str, Role | None]]:
    """(METHOD, path, least role) of every route; None for a route open to anyone."""
    found: list[tuple[str, str, Role | None]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            role = role_of(handler.resolve_guards())
            for method in sorted(handler.http_methods):
                if method in ("HEAD", "OPTIONS"):
                    continue
                found.append((method, route.path_format or "/", role))
    return sorted(found, key=lambda r: (r[1], r[0]))


def markdown_table(app: Litestar) -> str:
    header = "| route | " + " | ".join(r.label for r in Role) + " |"
    lines = [header, "|---|" + "---|" * len(Role)]
    for method, path, role in route_roles(app):
        if path.startswith(PUBLIC_PREFIXES):
            continue
        cells = ["yes" if role is not None and r >= role else "—" for r in Role]
        lines.append(f"| `{method} {path}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

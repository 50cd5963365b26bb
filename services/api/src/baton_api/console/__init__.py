"""The web console at /console (docs/console.md): server-rendered pages with htmx."""

from baton_api.console.pages import console_routers

__all__ = ["console_routers"]

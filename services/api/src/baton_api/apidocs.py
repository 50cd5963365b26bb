"""The API's documentation pages and machine-readable schemas, all served by the api itself.

- `/schema/openapi.json`: the OpenAPI document (Litestar's, with Baton's problems: openapi.py);
- `/schema/swagger` (also `/schema`) and `/schema/redoc`: the same, for people to read and try;
- `/schema/asyncapi.json`: the AsyncAPI 3.0 document of the NATS subjects and MQTT topics
  (baton_contracts.asyncapi, as `baton asyncapi` prints it);
- `/schema/assets/...`: what the two pages load (static/README.md: the npm packages, their
  versions and licences).

Litestar's render plugins load their scripts, styles, favicon and fonts from CDNs by default,
so the pages were blank without Internet access; here every URL they reference is the api's.
All of it is public, like the OpenAPI document (no API key).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import (
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

from baton_contracts.asyncapi import asyncapi_json

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
STATIC = Path(__file__).parent / "static"
SWAGGER = f"{ASSETS_PATH}/swagger-ui"
REDOC = f"{ASSETS_PATH}/redoc"
# What the pages may load: only the api's own URLs (and what the bundles make themselves:
# inline styles and scripts, data: images and fonts, blob: workers). The browser then
# refuses the one off-host URL the bundles hold (Redoc's footer logo, which hides itself).
POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
    ]
)
# Litestar writes `favicon` first in <head>, before any script or style: the policy goes
# there too. Its default favicon is on a CDN: Swagger UI's own, served here.
HEAD = (
    f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
    f"<link rel='icon' type='image/png' href='{SWAGGER}/favicon-32x32.png'>"
)
# The files are replaced only with a new release of the api: a day is short enough.
ASSET_CACHE = CacheControlHeader(max_age=86400, public=True)


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Swagger UI (the default page, `/schema`) and Redoc, from the api's own assets."""
    return [
        SwaggerRenderPlugin(
            js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            css_url=f"{SWAGGER}/swagger-ui.css",
            standalone_preset_js_url=f"{SWAGGER}/swagger-ui-standalone-preset.js",
            favicon=HEAD,
        ),
        RedocRenderPlugin(
            js_url=f"{REDOC}/redoc.standalone.js",
            google_fonts=False,  # its fonts come from Google's CDN: the system's instead
            favicon=HEAD,
        ),
    ]


@cache
def _asyncapi() -> bytes:
    return asyncapi_json().encode()


@get(f"{SCHEMA_PATH}/asyncapi.json", include_in_schema=False, sync_to_thread=False)
def asyncapi_document() -> Response[bytes]:
    """The AsyncAPI 3.0 document (docs/asyncapi.json is the same)."""
    return Response(_asyncapi(), media_type="application/json")


def routes() -> list[HTTPRouteHandler | Router]:
    """The routes beside Litestar's own OpenAPI ones (OpenAPIConfig.path is SCHEMA_PATH)."""
    assets = create_static_files_router(
        ASSETS_PATH, directories=[STATIC], name="apidocs-assets", cache_control=ASSET_CACHE
    )
    return [asyncapi_document, assets]

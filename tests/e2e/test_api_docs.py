"""The API's documentation pages work with no Internet access: a running api serves each page
and everything it loads itself, and nothing it serves points at a CDN.

The api runs as its own process (with nats-server and the MQTT broker of the harness), and
every request below goes over HTTP to it, as a browser's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from baton_cli.localstack import Stack
from tests.e2e.conftest import dump_logs, make_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/schema", "/schema/swagger", "/schema/redoc"]
SCHEMAS = {"/schema/openapi.json": "application/vnd.oai.openapi+json"}
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}
# Where the usual front-end CDNs live: nothing the api serves may name one.
CDN_HOSTS = (
    "cdn.jsdelivr.net",
    "unpkg.com",
    "cdnjs.cloudflare.com",
    "fonts.googleapis.com",
    "fonts.gstatic.com",
    "cdn.redoc.ly",
)


class References(HTMLParser):
    """Every URL a page makes the browser load: src and href of its elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.policy: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" and found.get("http-equiv") == "Content-Security-Policy":
            self.policy = found.get("content")
        for name in ("src", "href"):
            value = found.get(name)
            if value:
                self.urls.append(value)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The api alone (the pages need nothing else), with the servers it connects to."""
    stack: Stack = make_stack(tmp_path_factory.mktemp("docs"), simulate=False)
    try:
        stack.start_infrastructure()
        stack.start("api")
        with httpx.Client(base_url=stack.api_url, timeout=30) as client:
            yield client
    except BaseException:
        print(dump_logs(stack))
        raise
    finally:
        stack.stop_all()


def references(api: httpx.Client, page: str) -> References:
    response = api.get(page)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    parser = References()
    parser.feed(response.text)
    return parser


@pytest.mark.parametrize("page", PAGES)
def test_a_page_loads_only_what_the_api_serves(api: httpx.Client, page: str) -> None:
    found = references(api, page)
    assert found.urls, "the page references no script or style"
    host = urlsplit(str(api.base_url)).netloc
    for url in found.urls:
        absolute = urlsplit(urljoin(f"{api.base_url}{page}", url))
        assert absolute.netloc == host, f"{page} loads {url} from another host"
        response = api.get(absolute.path)
        assert response.status_code == 200, f"{page}: {url} answers {response.status_code}"
        suffix = Path(absolute.path).suffix
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in CONTENT_TYPES[suffix], f"{url} is served as {media_type}"
        assert response.content
    # The browser refuses anything off-host the bundles themselves would fetch.
    assert found.policy is not None
    assert "default-src 'self'" in found.policy
    assert "http" not in found.policy


def test_the_pages_load_their_own_scripts(api: httpx.Client) -> None:
    assert any(u.endswith("/swagger-ui-bundle.js") for u in references(api, "/schema").urls)
    assert any(u.endswith("/redoc.standalone.js") for u in references(api, "/schema/redoc").urls)


def test_the_asyncapi_document_is_served_as_checked_in(api: httpx.Client) -> None:
    response = api.get("/schema/asyncapi.json")  # public, like the OpenAPI document
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.text == (ROOT / "docs" / "asyncapi.json").read_text()


def test_nothing_the_api_serves_names_a_cdn(api: httpx.Client) -> None:
    """The pages, both schema documents, every asset, and every public GET route."""
    openapi = api.get("/schema/openapi.json")
    assert openapi.headers["content-type"].startswith(SCHEMAS["/schema/openapi.json"])
    public = [
        path
        for path, item in openapi.json()["paths"].items()
        if "get" in item and "{" not in path and not item["get"].get("security")
    ]
    assets = {u for page in PAGES for u in references(api, page).urls}
    served = [*PAGES, *SCHEMAS, "/schema/asyncapi.json", *public, *assets]
    assert {"/health", "/ready"} <= set(public)
    for path in served:
        body = api.get(path).text
        named = [host for host in CDN_HOSTS if host in body]
        # Redoc's bundle holds its footer logo's URL; the pages' policy refuses to load it.
        if path.endswith("/redoc.standalone.js"):
            named = [host for host in named if host != "cdn.redoc.ly"]
        assert named == [], f"{path} names {named}"

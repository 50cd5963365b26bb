"""What the `baton` commands that go through the API share: its URL and key options, and one
call that exits with the problem's words when the API says no.

Exit status of every such command: 0 done, 1 the API answered with a problem (one line on
stderr, then one line per wrong field), 2 the API could not be reached (or a usage error).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, NoReturn

import typer

from baton_cli.devstate import origin
from baton_cli.output import problem_lines

ApiUrl = Annotated[str, typer.Option(envvar="BATON_API_URL", help="Base URL of the Baton API.")]
ApiKey = Annotated[
    str, typer.Option(envvar="BATON_API_KEY", help="API key (or JWT) with the role needed.")
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON answer (stable) instead of text.")
]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_KEY = "dev-admin-key"

EXIT_PROBLEM = 1  # the API (or the store) said no
EXIT_UNREACHABLE = 2  # nothing answered


def fail(message: str, code: int = EXIT_PROBLEM) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def url_origin(api_url: str) -> str:
    """Where `api_url` came from, for the message when nothing answers there."""
    if os.environ.get("BATON_API_URL") == api_url:
        return origin("BATON_API_URL")
    if api_url == DEFAULT_URL:
        return "the default; set BATON_API_URL"
    return "--api-url"


def unreachable(api_url: str, exc: Exception) -> NoReturn:
    import httpx

    why = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else str(exc)
    fail(
        f"error: cannot reach the Baton API at {api_url} ({url_origin(api_url)}): {why}. "
        "Is it running (`make run`)?",
        EXIT_UNREACHABLE,
    )


def request(
    method: str,
    api_url: str,
    path: str,
    key: str,
    body: Any = None,
    params: Any = None,
    timeout: float = 30.0,
) -> Any:
    """`method` on the API's `path`; the httpx response, or exit 2 when nothing answers."""
    import httpx

    url = f"{api_url.rstrip('/')}{path}"
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    try:
        return httpx.request(
            method, url, json=body, params=params, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        unreachable(api_url, exc)


def answer(response: Any) -> Any:
    """The JSON of a success, or exit 1 with the problem (RFC 9457) on stderr."""
    try:
        payload = response.json() if response.content else None
    except ValueError:
        payload = None
    if response.is_error:
        fail("\n".join(problem_lines(response.status_code, response.reason_phrase, payload)))
    return payload


def call(method: str, api_url: str, path: str, key: str, body: Any = None, **options: Any) -> Any:
    """`request`'s JSON answer, or exit 1 (a problem) / 2 (no API). `options`: `params`,
    `timeout`."""
    return answer(request(method, api_url, path, key, body, **options))

"""What the `baton` commands that go through the API share: its URL and key options, and one
call that exits with the problem's words when the API says no."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer

from baton_cli.output import problem_lines

ApiUrl = Annotated[str, typer.Option(envvar="BATON_API_URL", help="Base URL of the Baton API.")]
ApiKey = Annotated[
    str, typer.Option(envvar="BATON_API_KEY", help="API key (or JWT) with the role needed.")
]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_KEY = "dev-admin-key"


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def call(method: str, api_url: str, path: str, key: str, body: Any = None) -> Any:
    """`method` on the API's `path`; the JSON answer, or exit 1 (a problem) / 2 (no API)."""
    import httpx

    url = f"{api_url.rstrip('/')}{path}"
    try:
        response = httpx.request(
            method, url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach the Baton API at {url}: {exc}", 2)
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.is_error:
        fail("\n".join(problem_lines(response.status_code, response.reason_phrase, payload)))
    return payload

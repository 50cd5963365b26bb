"""End-to-end harness: the four services and the simulator as separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton_cli.localstack import Stack
from tests.conftest import fresh_database

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "e2e-key"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "CANCELED"}


class Baton:
    """A thin client over the running stack's HTTP API, with polling helpers."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(
            base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=70
        )

    def send(
        self,
        device: str,
        name: str,
        params: dict[str, Any] | None = None,
        ttl: int | None = None,
        wait: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        body: dict[str, Any] = {"name": name, "params": params or {}}
        if ttl is not None:
            body["ttl"] = ttl
        query = {"wait": wait} if wait is not None else {}
        return self.http.post(
            f"/v1/devices/{device}/commands", json=body, params=query, headers=headers or {}
        )

    def get(self, execution_id: str, expand_log: bool = False) -> dict[str, Any]:
        params = {"expand": "log"} if expand_log else {}
        response = self.http.get(f"/v1/executions/{execution_id}", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_for(
        self, execution_id: str, statuses: set[str], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.http.get(f"/v1/executions/{execution_id}", params={"expand": "log"})
            if response.status_code == 200:
                last = response.json()
                if last["status"] in statuses:
                    return last
            time.sleep(0.05)
        raise AssertionError(f"{execution_id} never reached {statuses} in {timeout}s; last {last}")


def make_stack(tmp: Path, **kwargs: Any) -> Stack:
    kwargs.setdefault("catalog", ROOT / "deploy/catalog/demo.yaml")
    return Stack(data_dir=tmp, api_key=API_KEY, **kwargs)


def wait_ready(stack: Stack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert not stack.dead(), f"{stack.dead()} died; logs in {stack.log_dir}"
        try:
            if httpx.get(f"{stack.api_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"stack not ready in {timeout}s; logs in {stack.log_dir}")


def dump_logs(stack: Stack) -> str:
    out = []
    for log in sorted(stack.log_dir.glob("*.log")):
        out.append(f"==== {log.name}\n" + log.read_text(errors="replace")[-4000:])
    return "\n".join(out)


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """Start the whole stack, ready; on a failure print its logs; stop it all at the end."""
    try:
        stack.start_all()
        wait_ready(stack)
        yield stack
    except BaseException:
        print(dump_logs(stack))
        raise
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def stack_backend() -> str:
    """Where the module's stack stores: SQLite files. A module runs on both backends with
    `pytestmark = pytest.mark.parametrize("stack_backend", BACKENDS, scope="module")`."""
    return "sqlite"


@pytest.fixture(scope="module")
def stack_database(stack_backend: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """BATON_DATABASE_URL of the module's stack: None, or a database of its own."""
    if stack_backend == "sqlite":
        yield None
        return
    with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url


def database_env(url: str | None) -> dict[str, str]:
    """What the stack's services are given to store in that database (none: SQLite)."""
    return {} if url is None else {"BATON_DATABASE_URL": url}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, stack_database: str | None) -> Iterator[Stack]:
    made = make_stack(tmp_path_factory.mktemp("stack"), extra_env=database_env(stack_database))
    with running(made) as started:
        yield started


@pytest.fixture(scope="module")
def baton(stack: Stack) -> Baton:
    return Baton(stack)

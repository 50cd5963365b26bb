"""`make run-cluster` as an operator drives it (docs/operations.md, "Rolling upgrades" and
"Backup and restore"): `baton dev run --cluster` on a database it is given, a rolling restart
with `baton dev restart` while commands are sent (none fails), then `baton dev stop`, which
leaves no process of the stack behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from baton_cli.localstack import PostgresServer
from baton_cli.processes import start_process
from baton_platform.sql import conninfo
from tests.conftest import eventually_sync, fresh_database

pytestmark = pytest.mark.e2e

KEY = "dev-admin-key"
# One replica of each service: the restart of each kind of replica, in the stack's order.
RESTARTED = ["dispatcher-1", "timeout-scheduler-1", "device-bridge-1", "api-1"]
# `make run-cluster` on free ports (0), metrics off.
RUN_CLUSTER = [sys.executable, "-m", "baton_cli.main", "dev", "run", "--cluster"] + [
    f"--{option}-port=0" for option in ("api", "nats", "mqtt", "metrics")
]


def baton(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "baton_cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


def children_of(pid: int) -> set[int]:
    """Every process below `pid` (/proc), the stack's servers and services."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, its in parents.items():
            if its == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class Load:
    """Commands sent one after another through the balancer until stopped; what each got."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.outcomes: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=30) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                try:
                    answer = client.post(
                        f"/v1/devices/demo-thermostat-{n % 5 + 1}/commands?wait=15",
                        headers={
                            "Authorization": f"Bearer {KEY}",
                            "Idempotency-Key": str(uuid.uuid4()),
                        },
                        json={"name": "set_temperature", "params": {"value": 20 + n % 5}},
                    )
                    status = answer.json().get("status") if answer.status_code == 201 else None
                    self.outcomes.append(f"{answer.status_code} {status or answer.text[:200]}")
                except httpx.HTTPError as exc:
                    self.outcomes.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.1)


def test_a_rolling_restart_of_run_cluster_fails_no_command_and_stop_leaves_nothing(
    tmp_path: Path, database: str
) -> None:
    data_dir = tmp_path / "var"
    out = tmp_path / "run-cluster.out"
    with out.open("wb") as sink:
        # In a session of its own, as make runs it, so its processes are; SIGTERM (what
        # `make stop` sends it) if this test run dies, so that it stops them all.
        run = start_process(
            [*RUN_CLUSTER, "--data-dir", str(data_dir)],
            own_session=True,
            death_signal=signal.SIGTERM,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BATON_DATABASE_URL": database},
        )
    try:
        eventually_sync(
            lambda: run.poll() is None and b"Baton is running." in out.read_bytes(),
            timeout=180,
            what=f"the cluster's banner ({out})",
        )
        banner = out.read_text()
        assert "BATON_DATABASE_URL=" not in banner  # the operator's: not printed back
        assert not (data_dir / "cluster" / "postgres").exists()  # no PostgreSQL of its own
        api_url = json.loads(Path(os.environ["BATON_DEV_STATE"]).read_text())["env"][
            "BATON_API_URL"
        ]
        started = children_of(run.pid)

        load = Load(api_url)
        load.thread.start()
        try:
            restarted = baton("dev", "restart", *RESTARTED, "--data-dir", str(data_dir))
        finally:
            load.stopping.set()
            load.thread.join(60)
        assert restarted.returncode == 0, restarted.stderr + restarted.stdout
        assert [line.split()[0] for line in restarted.stdout.splitlines()] == RESTARTED
        assert len(load.outcomes) >= 10
        assert [o for o in load.outcomes if o != "201 SUCCEEDED"] == []
        with psycopg.connect(conninfo(database)) as db:  # the store given, not one of its own
            row = db.execute("SELECT count(*) FROM executions_events").fetchone()
            assert row is not None and row[0] >= len(load.outcomes)

        every = started | children_of(run.pid)
        stop = subprocess.Popen(
            [sys.executable, "-m", "baton_cli.main", "dev", "stop", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Reaped as it ends (as make reaps it), or `dev stop` would see its zombie running.
        assert run.wait(60) == 0
        said, _ = stop.communicate(timeout=30)
        assert stop.returncode == 0, said
        eventually_sync(
            lambda: not [pid for pid in every if alive(pid)], timeout=30, what="every process gone"
        )
        assert not (data_dir / "run" / "processes.json").exists()
    finally:
        if run.poll() is None:
            run.terminate()  # its own stop stops what it started
            run.wait(60)

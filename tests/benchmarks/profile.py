"""Where a command's CPU goes: one open-loop step on a bench stack while py-spy samples
every Python process of it, then each process's CPU per command, its hottest functions, and
the CPU per command of each library (nats-py, paho, psycopg, ...) over the processes.

    python -m tests.benchmarks.profile --database postgres --rate 60 --seconds 30

py-spy (`pip install py-spy`) must be on PATH and allowed to read other processes (root,
or ptrace_scope 0). The raw profiles are kept under `--out` for a flame graph
(`py-spy`'s collapsed-stack format: flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from baton_platform.nats_access import OPS
from baton_simulator import fleet_ids
from tests.benchmarks.commands import warm_up
from tests.benchmarks.load import Load, LoadSettings
from tests.benchmarks.procs import busy_by_process, stack_pids
from tests.benchmarks.report import fsynced
from tests.benchmarks.stacks import (
    add_nats_options,
    api_client,
    database_url,
    fleet_stack,
    settle,
    start_fleet,
    start_services,
)

IDLE_WINDOW_S = 10.0  # how long the idle stack is measured, after the warm-up
PYTHON_PROCESSES = ("api", "dispatcher", "device-bridge", "timeout-scheduler", "simulator")


def samples(raw: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's collapsed stacks: each stack's frames, outermost first, and its samples."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            yield stack.split(";"), int(count)


def hottest(raw: Path, top: int) -> list[tuple[str, float]]:
    """The functions with the most samples on top of the stack (self time), as shares."""
    own: Counter[str] = Counter()
    for frames, count in samples(raw):
        own[frames[-1]] += count
    total = sum(own.values())
    return [(frame, n / total) for frame, n in own.most_common(top)] if total else []


# What each profiled sample is charged to: the library of its innermost frame that belongs
# to one of these (by the frame's file path), so a pydantic call made by nats-py is
# pydantic's. It bounds what a change can save: batching NATS messages saves at most the
# "nats" share of the Python processes, and nats-server's own CPU.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nats client", ("nats/", "faststream/")),
    ("mqtt client", ("paho/", "aiomqtt/")),
    ("http server", ("uvicorn/", "litestar/", "httptools", "h11/", "msgspec/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("store client", ("psycopg/", "psycopg_pool/", "sqlite3/", "eventsourcing/")),
    ("traces, metrics, logs", ("opentelemetry/", "prometheus_client/", "logging/")),
    ("json", ("json/",)),
    ("baton", ("baton_",)),
    ("asyncio, threads", ("asyncio/", "selectors.py", "concurrent/", "threading.py")),
)
OTHER = "other"


def library_of(frame: str) -> str | None:
    """`frame` as py-spy writes it: `function (path/to/file.py:line)`."""
    where = frame.rpartition(" (")[2]
    for library, paths in LIBRARIES:
        if any(path in where for path in paths):
            return library
    return None


def by_library(raw: Path) -> dict[str, float]:
    """Each library's share of the samples (self time, charged as `LIBRARIES` says)."""
    shares: Counter[str] = Counter()
    for frames, count in samples(raw):
        shares[next((lib for f in reversed(frames) if (lib := library_of(f))), OTHER)] += count
    total = sum(shares.values())
    return {library: n / total for library, n in shares.most_common()} if total else {}


async def stream_subjects(url: str) -> Counter[str]:
    """Messages each stream holds, by subject with its device and ids left out."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        found: Counter[str] = Counter()
        for stream in await js.streams_info():
            assert stream.config.name is not None  # the server names every stream it lists
            info = await js.stream_info(stream.config.name, subjects_filter=">")
            for subject, n in (info.state.subjects or {}).items():
                kind = ".".join(part for part in subject.split(".")[:5] if "-" not in part)
                found[f"{stream.config.name} {kind}"] += n
        return found
    finally:
        await nc.close()


def subject_kind(subject: str) -> str:
    """A subject with its ids left out: inboxes, execution and device ids, sequences."""
    if subject.startswith("_INBOX."):
        # Each service's inbox prefix names its NATS user (baton_platform.nats_access).
        return f"_INBOX.{subject.split('.')[1]} (replies)"
    if subject.startswith("$JS.ACK."):
        return "$JS.ACK." + subject.split(".")[2]  # acknowledgements, by stream
    parts = subject.split(".")
    kept = [p for p in parts[:6] if "-" not in p and not p.isdigit() and len(p) < 24]
    return ".".join(kept)


class SubjectCounter:
    """Every message on the NATS server while it runs, counted by `subject_kind`: where
    nats-server's work per command comes from (a subscription to `>` as `ops` sees each
    publish once, JetStream's deliveries to consumers included)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def run(self, url: str) -> Client:
        nc = await nats.connect(url)

        async def count(msg: Msg) -> None:
            self.counts[subject_kind(msg.subject)] += 1

        await nc.subscribe(">", cb=count, pending_msgs_limit=1_000_000)
        return nc


def statements_reset(url: str) -> None:
    import psycopg

    from baton_platform.sql import conninfo

    with psycopg.connect(conninfo(url), autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        db.execute("SELECT pg_stat_statements_reset()")


def top_statements(url: str, top: int) -> list[tuple[int, float, str]]:
    """The statements run since the reset, most called first: (calls, mean ms, text)."""
    import psycopg

    from baton_platform.sql import conninfo

    with psycopg.connect(conninfo(url), autocommit=True) as db:
        rows = db.execute(
            "SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g')"
            " FROM pg_stat_statements WHERE query NOT LIKE '%%pg_stat_statements%%'"
            " ORDER BY calls DESC LIMIT %s",
            (top * 3,),
        ).fetchall()
    return [(int(calls), float(ms), str(q)[:140]) for calls, ms, q in rows]


def spy_on(spy: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` for `seconds` into `out` (collapsed stacks, GIL holders only)."""
    options = ["--duration", str(int(seconds)), "--rate", "200", "--format", "raw"]
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), *options, "--nonblocking", "--gil", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def profile(args: argparse.Namespace, scratch: Path) -> None:
    spy = shutil.which("py-spy")
    if spy is None and not args.no_spy:
        raise SystemExit("py-spy is not on PATH: pip install py-spy")
    postgres = args.database == "postgres"
    server_settings = ["shared_preload_libraries=pg_stat_statements"] if postgres else []
    with fleet_stack(
        scratch,
        "profile",
        args.devices,
        None,
        args.database,
        postgres_settings=server_settings,
        jetstream_fsync=fsynced(args),
        events_persist=args.events_persist,
    ) as stack:
        stack.start_infrastructure()
        start_fleet(stack, args.devices)
        await start_services(stack)
        with api_client(stack) as client:
            load = Load(client, LoadSettings(fleet_ids(args.devices)))
            await warm_up(stack, load, 60)
            pids = stack_pids(stack)
            idle_cost = await busy_by_process(pids, IDLE_WINDOW_S)
            profiled = [] if spy is None or args.no_spy else args.spy.split(",")
            spies = {
                name: spy_on(spy or "py-spy", pid, args.seconds, args.out / f"{name}.txt")
                for name, pid in pids.items()
                if name in profiled
            }
            url = database_url(stack)
            if url is not None:
                statements_reset(url)
            nats_url = stack.nats_url_as(OPS)
            before = await stream_subjects(nats_url)
            counter = SubjectCounter()
            watcher = await counter.run(nats_url) if args.subjects else None
            step = await load.step(args.rate, args.seconds, pids, lambda: settle(stack, client, 60))
            if watcher is not None:
                await watcher.close()
            after = await stream_subjects(nats_url)
            for process in spies.values():
                process.wait()
        statements = top_statements(url, args.top) if url is not None else []
    done = step.outcomes.get("SUCCEEDED", 0)
    per = max(done, 1)  # commands to divide by
    print(f"{step.issued} offered at {args.rate}/s, {done} succeeded: {dict(step.outcomes)}")
    p50, p99 = (1000 * step.latency(q) for q in (0.5, 0.99))
    print(f"due -> SUCCEEDED: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"{'process':20} {'ms CPU / command':>17} {'idle: ms CPU / s':>17}")
    for name, seconds in sorted(step.cpu.items(), key=lambda kv: -kv[1]):
        print(f"{name:20} {1000 * seconds / per:17.2f} {1000 * idle_cost[name]:17.1f}")
    total_idle = 1000 * sum(idle_cost.values())
    print(f"{'all':20} {1000 * sum(step.cpu.values()) / per:17.2f} {total_idle:17.1f}")
    print("\nJetStream messages per command, by stream and subject kind")
    for key in sorted(after):
        if (grew := after[key] - before.get(key, 0)) > 0:
            print(f"  {grew / per:6.2f}  {key}")
    if counter.counts:
        print("\nNATS messages per command, by subject kind (a subscriber to '>' counting)")
        for kind, n in counter.counts.most_common():
            if n / per >= 0.01:
                print(f"  {n / per:6.2f}  {kind}")
        print(f"  {sum(counter.counts.values()) / per:6.2f}  in all")
    if statements:
        print("\nPostgreSQL statements per command (calls, ms per call), by calls")
        for calls, ms, query in statements:
            print(f"  {calls / per:6.2f}  {ms:6.3f}  {query}")
        print(f"  {sum(c for c, _, _ in statements) / per:6.2f}  in all (listed)")
    charged: dict[str, float] = {}  # ms per command, over the profiled processes
    for name in spies:
        raw = args.out / f"{name}.txt"
        if not raw.exists():
            continue
        print(f"\n{name}: hottest functions (self time)")
        for frame, share in hottest(raw, args.top):
            print(f"  {100 * share:5.1f} %  {frame}")
        shares = by_library(raw)
        print("  by library: " + ", ".join(f"{lib} {100 * sh:.0f} %" for lib, sh in shares.items()))
        for library, share in shares.items():
            ms = share * 1000 * step.cpu.get(name, 0.0) / per
            charged[library] = charged.get(library, 0.0) + ms
    if charged:
        print("\nms CPU per command by library, the profiled processes together")
        print("(each process's CPU split as its samples are: an estimate)")
        for library, ms in sorted(charged.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:6.2f}  {library}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="offered commands/s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--top", type=int, default=12, help="functions listed per process")
    parser.add_argument(
        "--spy", default=",".join(PYTHON_PROCESSES), help="the processes profiled, comma-separated"
    )
    parser.add_argument(
        "--subjects", action="store_true", help="count every NATS message by subject kind"
    )
    add_nats_options(parser)
    parser.add_argument("--no-spy", action="store_true", help="only the counts, no profiles")
    parser.add_argument("--out", type=Path, default=Path("var/profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="baton-profile-") as scratch:
        asyncio.run(profile(args, Path(scratch)))


if __name__ == "__main__":
    main()

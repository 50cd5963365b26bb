"""What one bench run found, and how it is printed."""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.benchmarks.load import LoadSettings, StepResult
from tests.quantiles import percentile

BENCH = "bench (load)"
STEP_HEADER = "   offered  completed  in time       p50       p99   gen lag  verdict"


_T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {line}", flush=True)


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return f"{seconds * 1000:.1f} ms"


def ratio(value: float, floor: float) -> str:
    if not floor or math.isinf(value):
        return "-"
    share = value / floor
    return f"{share:.2f}x" if share >= 0.1 else f"{share:.3f}x"


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kib = int(info.readline().split()[1])
    return (
        f"{os.cpu_count()} cores ({model}), {mem_kib / 2**20:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


# --- what one run found ------------------------------------------------------------------------


@dataclass
class Floor:
    """One floor: latency samples and the CPU one operation cost (all processes)."""

    samples: list[float]
    cpu_per_op: float

    def p(self, q: float) -> float:
        return percentile(sorted(self.samples), q)


@dataclass(frozen=True)
class StoreFloor:
    """The event store's write rates for succeeding commands (commands/s) and their CPU."""

    single: float  # one command per transaction
    batched: float  # many per transaction
    single_cpu: float  # seconds per command
    batched_cpu: float


@dataclass
class Growth:
    best: StepResult | None
    store: StoreFloor | None
    bounded: bool  # whether a step failed: else the max is at least the best step's rate


@dataclass(frozen=True)
class Burst:
    """The closed-loop figure of earlier runs: `commands` submitted with `concurrency` in
    flight (not waited for), timed until every one SUCCEEDED."""

    commands: int
    concurrency: int
    accepted: float  # seconds until all were accepted
    finished: float  # seconds until all had SUCCEEDED


@dataclass
class Figures:
    floors: dict[str, Floor] = field(default_factory=dict)
    store: StoreFloor | None = None
    unloaded: list[float] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    best: StepResult | None = None
    half: StepResult | None = None
    idle_rss_kib: dict[str, int] = field(default_factory=dict)
    peak_rss_kib: dict[str, int] = field(default_factory=dict)
    growth: dict[str, Growth] = field(default_factory=dict)
    burst: Burst | None = None
    load_average: float = field(default_factory=lambda: os.getloadavg()[0])

    def path_floor(self, q: float) -> float:
        """What a command's path takes at least: the HTTP request in, the NATS request to
        the dispatcher, the round trip to the device, and its four saves unbatched."""
        names = ("http", "nats", "device")
        if self.store is None or not all(n in self.floors for n in names):
            return 0.0
        return sum(self.floors[n].p(q) for n in names) + 1 / self.store.single

    def cpu_floor(self) -> float:
        """CPU a command costs at least: its path's, and its saves batched."""
        names = ("http", "nats", "device")
        if self.store is None or not all(n in self.floors for n in names):
            return 0.0
        return sum(self.floors[n].cpu_per_op for n in names) + self.store.batched_cpu


def step_line(step: StepResult, settings: LoadSettings) -> str:
    share = step.in_time(settings.threshold) / step.issued  # of what it sent
    verdict = "pass" if step.passed(settings) else "FAIL"
    if step.aborted:
        verdict += f" (stopped after {step.elapsed:.0f} s)"
    failures = {k: v for k, v in step.outcomes.items() if k != "SUCCEEDED"}
    return (
        f"{step.rate:8.1f}/s {step.completed_rate(settings):9.1f}/s {share:7.1%} "
        f"{ms(step.latency(0.5)):>9} {ms(step.latency(0.99)):>9} {ms(step.lag(0.99)):>9}  "
        f"{verdict}{'  ' + str(failures) if failures else ''}"
    )


# --- the report ----------------------------------------------------------------------------------


def report(args: argparse.Namespace, figures: Figures, broker: str) -> None:
    settings = LoadSettings([], args.threshold, args.target, args.wait, args.ttl)
    print()
    print(f"Baton benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    start, end = figures.load_average, os.getloadavg()[0]
    print(
        f"load average (1 min, every process of the machine): {start:.1f} at the start, "
        f"{end:.1f} at the end"
    )
    storage = "PostgreSQL" if getattr(args, "database", "sqlite") == "postgres" else "SQLite"
    replicas = getattr(args, "replicas", 1)
    nodes = getattr(args, "nats_nodes", 1)
    per_service = "one process" if replicas == 1 else f"{replicas} replicas"
    nats = "one NATS server" if nodes == 1 else f"a {nodes}-node NATS cluster (R3)"
    if not fsynced(args):
        nats += " NOT fsyncing each write (--jetstream-sync default: a comparison only)"
    if getattr(args, "events_persist", "default") == "async":
        nats += ", BATON_NATS_EVENTS_PERSIST=async (events acknowledged before their fsync)"
    print(f"stack: {storage}, {per_service} per service, {nats}, {broker} MQTT broker")
    print(f"command: python -m tests.benchmarks.commands {shlex.join(sys.argv[1:])}".rstrip())
    report_floors(args, figures)
    report_latency(figures)
    report_max(args, figures, settings)
    report_cost(figures)
    report_growth(figures, settings)
    report_burst(figures)


def fsynced(args: argparse.Namespace) -> bool:
    """Whether the stacks' nats-servers fsync each write (Baton's setting)."""
    return getattr(args, "jetstream_sync", "always") == "always"


def report_floors(args: argparse.Namespace, figures: Figures) -> None:
    labels = {
        "nats": "NATS request/reply",
        "mqtt": "MQTT QoS 1 round trip, bare",
        "device": "MQTT round trip to a simulated device",
        "jetstream": "JetStream publish ("
        + ("fsync each write" if fsynced(args) else "default sync")
        + ")",
        "http": "HTTP GET /health on the api",
    }
    # The store floors: the main run's, and those measured on a stored history.
    stores = [("", figures.store)] + [
        (f" ({name.split('+ ')[-1]})", growth.store)
        for name, growth in figures.growth.items()
        if growth.store is not figures.store
    ]
    rates = [
        (f"event store, {label}{where}", rate, cpu)
        for where, store in stores
        if store is not None
        for label, rate, cpu in (
            ("1 command per transaction", store.single, store.single_cpu),
            (f"{args.store_batch} per transaction", store.batched, store.batched_cpu),
        )
    ]
    if not (figures.floors or rates):
        return
    width = max([40, *(len(label) for label, _, _ in rates)])
    print(f"\n{'floors':{width + 2}} {'p50':>9}  {'p99':>9}  {'CPU/op':>9}")
    for key, label in labels.items():
        if (floor := figures.floors.get(key)) is not None:
            print(
                f"  {label:{width}} {ms(floor.p(0.5)):>9}  {ms(floor.p(0.99)):>9}  "
                f"{ms(floor.cpu_per_op):>9}"
            )
    for label, rate, cpu in rates:
        print(f"  {label:{width}} {rate:7.0f} commands/s  {ms(cpu):>9}")
    if path := figures.path_floor(0.5):
        print(
            f"  {'path floor (the sum, saves unbatched)':{width}} {ms(path):>9}  "
            f"{ms(figures.path_floor(0.99)):>9}  {ms(figures.cpu_floor()):>9} (saves batched)"
        )


def report_latency(figures: Figures) -> None:
    rows = []
    if figures.unloaded:
        rows.append((f"unloaded, {len(figures.unloaded)} one at a time", figures.unloaded))
    if figures.half is not None:
        rows.append((f"at half the max rate ({figures.half.rate:.1f}/s)", figures.half.latencies))
    if not rows:
        return
    floor50, floor99 = figures.path_floor(0.5), figures.path_floor(0.99)
    print(f"\nlatency, due -> SUCCEEDED{'':18}p50        p99   to the path floor")
    for label, samples in rows:
        ordered = sorted(samples)
        p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
        print(
            f"  {label:40} {ms(p50):>9}  {ms(p99):>9}   "
            f"p50 {ratio(p50, floor50)}, p99 {ratio(p99, floor99)}"
        )


def report_max(args: argparse.Namespace, figures: Figures, settings: LoadSettings) -> None:
    if not figures.steps:
        return
    print(
        f"\nmax sustained rate ({args.devices:,} devices, steps of {args.step_seconds:g} s, "
        f">= {args.target:.0%} SUCCEEDED within {args.threshold:g} s of being due)"
    )
    print("  " + STEP_HEADER)
    for step in figures.steps:
        print("  " + step_line(step, settings))
    best = figures.best
    if best is None:
        print("  no step passed")
        return
    if all(step.passed(settings) for step in figures.steps):
        print("  (no step failed within --max-steps: the max is higher)")
    rate = best.completed_rate(settings)
    print(f"  best: {rate:.1f} commands/s completed (offered {best.rate:.1f}/s)")
    if (store := figures.store) is not None:
        print(
            f"  to the event store floor: {ratio(rate, store.batched)} of {store.batched:.0f}/s "
            f"batched, {ratio(rate, store.single)} of {store.single:.0f}/s one per transaction"
        )


def report_cost(figures: Figures) -> None:
    best = figures.best
    if best is None:
        return
    done = best.in_time(math.inf)
    print(
        f"\ncost at the best step ({best.rate:.1f}/s, {done} commands SUCCEEDED; peak RSS "
        "over the whole run, and to the same process idle after start)"
    )
    print(f"  {'process':28} CPU/command  cores busy   peak RSS")
    for name, seconds in best.cpu.items():
        peak, idle = figures.peak_rss_kib.get(name, 0), figures.idle_rss_kib.get(name, 0)
        print(
            f"  {name:28} {ms(seconds / done):>11}  {seconds / best.window:10.2f}  "
            f"{peak / 1024:6.0f} MB  {ratio(peak, idle)}"
        )
    baton = sum(v for k, v in best.cpu.items() if k != BENCH) / done
    print(
        f"  {'all but the bench':28} {ms(baton):>11}  "
        f"to the CPU floor ({ms(figures.cpu_floor())}): {ratio(baton, figures.cpu_floor())}"
    )


def report_growth(figures: Figures, settings: LoadSettings) -> None:
    if not figures.growth:
        return
    reference = figures.best.completed_rate(settings) if figures.best else 0.0
    print(f"\ngrowth{'':34}max rate   to the main run   to its store floor (batched)")
    for name, growth in figures.growth.items():
        rate = growth.best.completed_rate(settings) if growth.best else 0.0
        at_least = "" if growth.bounded else ">="
        shown = f"{at_least}{rate:.1f}/s" if growth.best else "no pass"
        floor = growth.store.batched if growth.store else 0.0
        print(
            f"  {name:36} {shown:>10}   {ratio(rate, reference):>15}   "
            f"{ratio(rate, floor):>10} of {floor:.0f}/s"
        )
    if not all(g.bounded for g in figures.growth.values()):
        print("  >=: no step failed within --max-steps; the max is higher")


def report_burst(figures: Figures) -> None:
    if (burst := figures.burst) is None:
        return
    rate = burst.commands / burst.finished
    print(
        f"\nburst ({burst.commands} commands, {burst.concurrency} in flight, not waited for)\n"
        f"  accepted in {burst.accepted:.2f} s ({burst.commands / burst.accepted:.0f}/s); "
        f"all SUCCEEDED in {burst.finished:.2f} s: {rate:.1f} commands/s"
    )
    if (store := figures.store) is not None:
        print(f"  to the event store floor: {ratio(rate, store.batched)} batched")

"""The docs' examples are run against the real stack, so they cannot drift from the code.

What counts as an example, in README.md and docs/*.md:

- a ```sh block of `curl` commands against `http://127.0.0.1:8080` (the `make run` address and
  key): each is sent to a running stack. When a ```json block follows the block directly and
  the block holds one command, that JSON is the documented answer and must match the real one
  (see `matches`); a problem document's `status` must also be the answer's status code.
  Without one, the answer must be a success (2xx).
- a ```console block of `$ baton ...` lines, each followed by the output it documents: the
  command is run with the stack's settings and its output (stdout and stderr) must match,
  line for line (see `line_pattern`). A documented line starting `error:` means the command
  must fail. `baton simulate` and `baton dev` run until stopped, so they are not run.

Ids are bound as they appear: an execution id shown in an answer stands, in later commands of
the same file, for the id the stack really gave (so `baton events <id of the send above>`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from baton_cli.localstack import Stack
from tests.e2e.conftest import ROOT, running

pytestmark = pytest.mark.e2e

DOC_HOST = "http://127.0.0.1:8080"
DOC_KEY = "dev-admin-key"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LONG_RUNNING = {"simulate", "dev"}  # `baton simulate`, `baton dev run`: until Ctrl-C
ELLIPSIS = "…"
MOMENT_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# A table's header row, as a terminal shows it: the commands run here write to a pipe, where
# a table is its rows alone (docs/cli.md, "Output and exit status").
TABLE_HEADER = re.compile(r"[A-Z][A-Z_]*(?: {2,}[A-Z][A-Z_]*)+")


# --- finding the examples ------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    text: str
    start: int  # offset in the file
    end: int


@dataclass
class Example:
    doc: Path
    line: int
    kind: str  # "curl" or "console"
    commands: list[str]
    expected: str | None = None  # the documented JSON answer (curl) or output (console)
    outputs: list[list[str]] = field(default_factory=list)  # console: lines per command


def blocks(text: str) -> list[Block]:
    return [Block(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]


def curl_commands(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def examples(doc: Path) -> list[Example]:
    text = doc.read_text()
    found: list[Example] = []
    fenced = blocks(text)
    for i, block in enumerate(fenced):
        line = text.count("\n", 0, block.start) + 1
        if block.lang == "sh" and (commands := curl_commands(block.text)):
            after = fenced[i + 1] if i + 1 < len(fenced) else None
            follows = after is not None and text[block.end : after.start].strip() == ""
            expected = (
                after.text if after is not None and follows and after.lang == "json" else None
            )
            found.append(Example(doc, line, "curl", commands, expected))
        elif block.lang == "console":
            example = Example(doc, line, "console", [])
            for raw in block.text.splitlines():
                if raw.startswith("$ "):
                    example.commands.append(re.sub(r"\s+#.*$", "", raw[2:]).strip())
                    example.outputs.append([])
                elif example.outputs:
                    example.outputs[-1].append(raw)
            found.append(example)
    return found


ALL = [example for doc in DOCS for example in examples(doc)]


# --- comparing a documented answer with a real one -----------------------------------------


def documented_json(text: str) -> Any:
    """The documented JSON; a lone `…` in an object or a list means "and more"."""

    def member(match: re.Match[str]) -> str:
        return f', "{ELLIPSIS}": "{ELLIPSIS}"}}' if match.group(1) == "}" else f', "{ELLIPSIS}"]'

    return json.loads(re.sub(r",\s*(?:…|\.\.\.)\s*([}\]])", member, text))


def is_moment(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def matches(doc: Any, real: Any, ids: dict[str, str], where: str = "$") -> list[str]:
    """Where `real` differs from what the docs show: the same keys (all of them, unless the
    docs end an object with `…`), the same values, except that a string holding `…` stands for
    any string, a documented moment for any moment, and a documented id for the real one."""
    if isinstance(doc, dict):
        if not isinstance(real, dict):
            return [f"{where}: documented an object, got {real!r}"]
        wide = doc.get(ELLIPSIS) == ELLIPSIS
        keys = [k for k in doc if k != ELLIPSIS]
        problems = [f"{where}.{k}: documented, missing" for k in keys if k not in real]
        if not wide:
            problems += [f"{where}.{k}: present, not documented" for k in real if k not in doc]
        for key in keys:
            if key in real:
                problems += matches(doc[key], real[key], ids, f"{where}.{key}")
        return problems
    if isinstance(doc, list):
        if not isinstance(real, list):
            return [f"{where}: documented a list, got {real!r}"]
        open_ended = bool(doc) and doc[-1] == ELLIPSIS
        items = doc[:-1] if open_ended else doc
        if len(real) < len(items) or (not open_ended and len(real) != len(items)):
            return [f"{where}: documented {len(items)} item(s), got {len(real)}"]
        return [p for i, d in enumerate(items) for p in matches(d, real[i], ids, f"{where}[{i}]")]
    if isinstance(doc, str) and ELLIPSIS in doc:
        return [] if isinstance(real, str) else [f"{where}: documented a string, got {real!r}"]
    if isinstance(doc, str) and UUID_RE.fullmatch(doc) and isinstance(real, str):
        if UUID_RE.fullmatch(real) and ids.setdefault(doc, real) == real:
            return []
        return [f"{where}: documented id {doc}, got {real!r}"]
    if is_moment(doc):
        return [] if is_moment(real) else [f"{where}: documented a moment, got {real!r}"]
    if doc != real or (type(doc) is not type(real) and not {type(doc), type(real)} <= {int, float}):
        return [f"{where}: documented {doc!r}, got {real!r}"]
    return []


def line_pattern(doc_line: str, ids: dict[str, str]) -> re.Pattern[str]:
    """A documented output line as a pattern: ids and numbers stand for any (ids bound once
    seen), `...`/`…` for anything, runs of blanks for any blanks."""
    parts: list[str] = []
    tokens = f"(\\.\\.\\.|…|\\s+|{UUID_RE.pattern}|{MOMENT_RE.pattern}|\\d+)"
    for token in re.split(tokens, doc_line):
        if not token:
            continue
        if MOMENT_RE.fullmatch(token):
            parts.append(MOMENT_RE.pattern)
        elif token in ("...", ELLIPSIS):
            parts.append(".*")
        elif token.isspace():
            parts.append(r"\s+")
        elif UUID_RE.fullmatch(token):
            known = ids.get(token)
            parts.append(re.escape(known) if known else f"(?P<u{len(parts)}>{UUID_RE.pattern})")
        elif token.isdigit():
            parts.append(r"\d+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def bind_ids(doc_line: str, real_line: str, pattern: re.Pattern[str], ids: dict[str, str]) -> None:
    documented = UUID_RE.findall(doc_line)
    matched = pattern.fullmatch(real_line)
    assert matched is not None
    real = [v for k, v in sorted(matched.groupdict().items(), key=lambda kv: int(kv[0][1:]))]
    for doc_id, real_id in zip([d for d in documented if d not in ids], real, strict=False):
        ids[doc_id] = real_id


# --- running them --------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: str | None


def parse_curl(command: str, base_url: str, ids: dict[str, str]) -> Request:
    for doc_id, real_id in ids.items():
        command = command.replace(doc_id, real_id)
    words = shlex.split(command)[1:]
    method, url, headers, body = "GET", "", {}, None
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-X", "--request"):
            method, i = words[i + 1], i + 1
        elif word in ("-H", "--header"):
            name, _, value = words[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 1
        elif word in ("-d", "--data", "--data-raw"):
            body, i = words[i + 1], i + 1
            method = "POST" if method == "GET" else method
        elif word.startswith("http"):
            url = word.replace(DOC_HOST, base_url)
        elif word not in ("-s", "--silent", "-i"):
            raise AssertionError(f"curl option {word!r} is not understood by this test")
        i += 1
    if body is not None and "content-type" not in {h.lower() for h in headers}:
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
    return Request(method, url, headers, body)


def merged_catalog(path: Path) -> Path:
    """The demo devices (README, api.md, operations.md) and the seed devices (dialects.md)."""
    demo = yaml.safe_load((ROOT / "deploy/catalog/demo.yaml").read_text())
    seeds = yaml.safe_load((ROOT / "deploy/catalog/seeds.yaml").read_text())
    merged = {
        "device_types": {**demo["device_types"], **seeds["device_types"]},
        "devices": [*demo["devices"], *seeds["devices"]],
    }
    for device in merged["devices"]:
        if device["id"] == "demo-silent-1":
            device.setdefault("labels", {})["simulate"] = "silent"
    path.write_text(yaml.safe_dump(merged))
    return path


@pytest.fixture(scope="module")
def docs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("docs")
    stack = Stack(
        data_dir=home / "var",
        api_key=DOC_KEY,
        catalog=merged_catalog(home / "catalog.yaml"),
        simulate_catalog=True,
    )
    with running(stack):
        yield stack


IDS: dict[Path, dict[str, str]] = {}  # per doc, documented id -> real id, in file order


def run_curl(stack: Stack, example: Example, ids: dict[str, str]) -> None:
    for command in example.commands:
        request = parse_curl(command, stack.api_url, ids)
        answer = httpx.request(
            request.method, request.url, headers=request.headers, content=request.body, timeout=70
        )
        if example.expected is None or len(example.commands) > 1:
            assert answer.is_success, f"{command}\n-> {answer.status_code} {answer.text}"
            continue
        documented = documented_json(example.expected)
        if isinstance(documented, dict) and str(documented.get("type", "")).startswith(
            "https://baton.dev/problems/"
        ):
            assert answer.status_code == documented["status"], answer.text
        else:
            assert answer.is_success, f"{command}\n-> {answer.status_code} {answer.text}"
        problems = matches(documented, answer.json(), ids)
        assert not problems, "\n".join([command, *problems, f"real answer: {answer.text}"])


def run_console(stack: Stack, example: Example, ids: dict[str, str]) -> None:
    env = {**os.environ, **stack.env(), "BATON_DATA_DIR": "var"}
    bin_dir = Path(sys.executable).parent
    for command, documented in zip(example.commands, example.outputs, strict=True):
        words = shlex.split(command)
        if words[0] != "baton":
            raise AssertionError(f"only `baton` commands are run: {command}")
        if words[1] in LONG_RUNNING:
            continue
        for doc_id, real_id in ids.items():
            words = [w.replace(doc_id, real_id) for w in words]
        done = subprocess.run(
            [str(bin_dir / "baton"), *words[1:]],
            cwd=stack.data_dir.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = (done.stdout + done.stderr).rstrip("\n").splitlines()
        documented = [line for line in documented if not TABLE_HEADER.fullmatch(line)]
        fails = any(line.startswith("error:") for line in documented)
        assert (done.returncode != 0) == fails, f"{command}: exit {done.returncode}\n{output}"
        if not documented:
            continue
        assert len(output) == len(documented), f"{command}\nexpected {documented}\ngot {output}"
        for doc_line, real_line in zip(documented, output, strict=True):
            pattern = line_pattern(doc_line, ids)
            assert pattern.fullmatch(real_line), (
                f"{command}\n  docs: {doc_line}\n  real: {real_line}"
            )
            bind_ids(doc_line, real_line, pattern, ids)


@pytest.mark.parametrize("example", ALL, ids=[f"{e.doc.name}:{e.line}" for e in ALL])
def test_docs_example_runs_as_documented(docs_stack: Stack, example: Example) -> None:
    ids = IDS.setdefault(example.doc, {})
    if example.kind == "curl":
        run_curl(docs_stack, example, ids)
    else:
        run_console(docs_stack, example, ids)


def test_every_doc_with_http_or_cli_examples_is_covered() -> None:
    """The parser finds the examples: a doc that shows curl or baton commands has examples."""
    for doc in DOCS:
        text = doc.read_text()
        shown = any(
            b.lang in ("sh", "console") and ("curl " in b.text or "$ baton" in b.text)
            for b in blocks(text)
        )
        assert not shown or examples(doc), doc
    assert any(e.expected for e in ALL), "no documented answer is checked"


LOG_LINE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00 (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"(?P<service>[\w-]+) [\w.]+: .*"
)


def test_every_service_logs_in_the_documented_format(docs_stack: Stack) -> None:
    """docs/operations.md: `<time> <LEVEL> <service> <logger>: <message>`, one per line (the
    text format, which the local stack writes)."""
    for service in ("api", "dispatcher", "device-bridge", "timeout-scheduler"):
        lines = (docs_stack.log_dir / f"{service}.log").read_text().splitlines()
        assert lines, service
        for line in lines:
            found = LOG_LINE.fullmatch(line)
            assert found and found["service"] == service, f"{service}.log: {line}"

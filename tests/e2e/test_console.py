"""The web console at /console, clicked through in a real browser against a real stack.

Debian's Chromium (`make chromium`, deploy/local/install-chromium.sh) driven by Playwright
for Python; Playwright's own browser download is never used. Each test asserts what must be
on screen: sign-in, filters and paging, the tables kept current by the SSE feed (and
without it), one execution with cancel and retry, the send form generated from the
command's JSON Schema (the browser's check and the server's problem details), devices
and device types, a viewer's read-only pages, a phone's screen and the keyboard alone.
Waiting is Playwright's `expect`: it polls until a deadline.

The screenshots go to BATON_CONSOLE_SCREENSHOTS when set (docs/console/ holds the committed
ones: `BATON_CONSOLE_SCREENSHOTS=docs/console pytest tests/e2e/test_console.py`), else to
the module's temporary folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from baton_cli.localstack import Stack
from tests.e2e.conftest import API_KEY, ROOT, Baton

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DEADLINE_MS = 20_000  # a live update must show within this (it comes at its event)
# Every `expect` polls until this deadline (Playwright's default, 5 s, is short on a loaded
# 2-core machine; nothing here waits longer than it must).
expect.set_options(timeout=DEADLINE_MS)
DIMMER = {
    "description": "A dimmable lamp (not simulated: it never answers).",
    "commands": {
        "set_level": {
            "description": "Dim to a level, in steps of ten.",
            "params": {
                "type": "object",
                "required": ["level"],
                "additionalProperties": False,
                "properties": {
                    "level": {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 10},
                    "mode": {"type": "string", "enum": ["fade", "snap"]},
                },
            },
        }
    },
}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("BATON_CONSOLE_SCREENSHOTS")
    folder = (ROOT / chosen) if chosen else tmp_path_factory.mktemp("screens")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"no {CHROMIUM}: `make chromium` installs Debian's Chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def console(stack: Stack, baton: Baton) -> str:
    """The console's address, once the stack also has a device type the simulator does not
    run (its schema has what the browser cannot check: multipleOf)."""
    made = baton.http.post("/v1/device-types", json={"name": "dimmer", "definition": DIMMER})
    assert made.status_code == 201, made.text
    device = baton.http.post("/v1/devices", json={"id": "dimmer-1", "type": "dimmer"})
    assert device.status_code == 201, device.text
    return f"{stack.api_url}/console"


def signed_in(browser: Browser, console: str, key: str = API_KEY, **options: Any) -> Page:
    context: BrowserContext = browser.new_context(**options)
    context.set_default_timeout(DEADLINE_MS)
    page = context.new_page()
    page.goto(f"{console}/sign-in")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Executions", exact=True)).to_be_visible()
    return page


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    signed = signed_in(browser, console)
    yield signed
    signed.context.close()


def test_sign_in_refuses_a_wrong_key_and_keeps_the_right_one_from_scripts(
    browser: Browser, console: str, shots: Path
) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{console}/executions")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))  # not signed in: sent there
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("the API key is not valid")
    page.screenshot(path=shots / "sign-in.png")

    page.get_by_label("API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Executions", exact=True)).to_be_visible()
    (cookie,) = context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the key

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    page.goto(f"{console}/executions")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    context.close()


def test_executions_filter_and_page(page: Page, baton: Baton, console: str, shots: Path) -> None:
    ids = [baton.send("demo-thermostat-3", "self_test").json()["id"] for _ in range(23)]
    for execution_id in ids:
        baton.wait_for(execution_id, {"FAILED"})

    page.get_by_label("Device", exact=True).fill("demo-thermostat-3")
    page.get_by_label("Command", exact=True).fill("self_test")
    page.get_by_label("Status").select_option("FAILED")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(".count")).to_contain_text("23 matching")
    rows = page.locator("#executions tbody tr")
    expect(rows).to_have_count(20)
    expect(rows.first).to_have_attribute("data-id", ids[-1])  # newest first
    page.screenshot(path=shots / "executions.png", full_page=True)

    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(3)
    expect(rows.last).to_have_attribute("data-id", ids[0])
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="First page").click()
    expect(rows).to_have_count(20)

    page.get_by_label("Until (UTC)").fill("2000-01-01T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#executions tbody")).to_contain_text("No executions match")


def test_the_table_shows_new_executions_and_their_status_as_they_change(
    page: Page, baton: Baton, console: str
) -> None:
    rereads: list[str] = []
    page.on("request", lambda r: rereads.append(r.url) if "/executions/rows" in r.url else None)
    with page.expect_request(
        lambda r: (
            r.resource_type == "eventsource"
            and "/console/events?device_id=demo-thermostat-4&last_event_id=" in r.url
        )
    ):
        page.goto(f"{console}/executions?device=demo-thermostat-4")
    region = page.locator("#executions-live")
    expect(region).to_have_attribute("hx-trigger", "live")  # no poll: only an event re-reads
    assert rereads == []
    execution_id = baton.send("demo-thermostat-4", "reboot").json()["id"]  # about 2 s

    row = page.locator(f'#executions tr[data-id="{execution_id}"]')
    expect(row).to_be_visible(timeout=DEADLINE_MS)  # no reload: an event came
    expect(row.locator(".status")).to_have_text("SUCCEEDED")
    changes = baton.http.get(f"/v1/executions/{execution_id}/events", timeout=10)
    events = changes.text.count("\nevent: ")
    # One re-read at most per event (fewer: at most two a second), each after one.
    assert 1 <= len(rereads) <= events, (rereads, changes.text)


def test_a_refused_stream_falls_back_to_reading_and_a_signed_out_one_to_sign_in(
    browser: Browser, console: str
) -> None:
    page = signed_in(browser, console)
    refused = page.context.new_page()  # the same browser, signed out as its requests go

    def signed_out(route: Route) -> None:  # the server's own answer to a browser without key
        headers = {k: v for k, v in route.request.headers.items() if k != "cookie"}
        answer = httpx.get(route.request.url, headers=headers, timeout=5)
        route.fulfill(status=answer.status_code, headers=dict(answer.headers), body=answer.content)

    refused.route(re.compile(r"/console/(events|executions/rows)\b"), signed_out)
    refused.goto(f"{console}/executions")  # the page itself is signed in
    # The stream is refused (sent to sign in): the region re-reads at once, which is refused
    # too, so the whole page goes to sign in.
    expect(refused).to_have_url(re.compile(r"/console/sign-in$"))
    page.context.close()


def test_one_execution_its_timeline_cancel_and_retry(
    page: Page, baton: Baton, console: str, shots: Path
) -> None:
    sent = baton.send("demo-silent-1", "set_temperature", {"value": 19}, ttl=120).json()
    page.goto(f"{console}/executions/{sent['id']}")
    expect(page.locator("#execution-status")).to_contain_text(re.compile("PENDING|SENT"))
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("requested")
    expect(timeline).to_contain_text("via api")
    expect(page.locator("pre").first).to_contain_text('"value": 19')

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#execution-status")).to_have_text("CANCELED")
    expect(timeline).to_contain_text("canceled in the console")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)  # it has ended
    page.screenshot(path=shots / "execution.png", full_page=True)

    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#timeline")).to_contain_text("requested as a retry")
    retry_id = page.url.rsplit("/", 1)[1]
    assert retry_id != sent["id"]
    assert baton.get(retry_id)["retry_of"] == sent["id"]
    page.get_by_role("link", name=sent["id"]).first.click()
    expect(page.locator(".retry-link")).to_have_text(retry_id)
    baton.http.post(f"/v1/executions/{retry_id}/cancel")


def test_send_from_the_schema_form_with_the_browsers_and_the_servers_checks(
    page: Page, baton: Baton, console: str, shots: Path
) -> None:
    page.get_by_role("link", name="Send a command").click()
    page.get_by_label("Device", exact=True).select_option("demo-thermostat-2")
    page.get_by_role("button", name="Choose").click()
    page.get_by_label("Command", exact=True).select_option("set_temperature")
    page.get_by_role("button", name="Choose").click()
    value = page.get_by_label("value *")
    expect(value).to_have_attribute("max", "35")

    value.fill("99")  # above the schema's maximum: the browser says so, nothing is sent
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#param-value-error")).not_to_be_empty()
    expect(value).to_have_attribute("aria-invalid", "true")
    expect(page).to_have_url(re.compile(r"/console/send\?"))

    value.fill("21")
    page.get_by_role("button", name="Send").click()
    expect(page).to_have_url(re.compile(r"/console/executions/[0-9a-f-]{36}$"))
    expect(page.locator("#execution-status")).to_have_text("SUCCEEDED")
    expect(page.locator("#timeline")).to_contain_text("via console")

    # What HTML cannot check (multipleOf) is the server's: its problem beside the field.
    page.goto(f"{console}/send?device=dimmer-1&command=set_level")
    page.get_by_label("level *").fill("15")
    page.get_by_label("mode").select_option("fade")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#param-level-error")).to_contain_text("multiple of 10")
    expect(page.get_by_label("level *")).to_have_value("15")  # what was typed stays
    page.screenshot(path=shots / "send.png", full_page=True)


def test_devices_their_presence_queue_and_types(
    page: Page, baton: Baton, console: str, shots: Path
) -> None:
    page.get_by_role("link", name="Devices", exact=True).click()
    presence = page.locator('#devices tr[data-id="demo-thermostat-1"] .presence')
    expect(presence).to_have_text("online")  # the simulator's devices are connected
    expect(page.locator('#devices tr[data-id="dimmer-1"] .presence')).to_have_text("unknown")
    page.screenshot(path=shots / "devices.png", full_page=True)

    # The table follows the feed: a command in flight shows without a reload, and goes.
    in_flight = page.locator('#devices tr[data-id="demo-silent-1"] td').nth(5)
    expect(in_flight).to_have_text("0")
    sent = baton.send("demo-silent-1", "reboot", ttl=120).json()
    expect(in_flight).to_have_text("1")
    baton.http.post(f"/v1/executions/{sent['id']}/cancel")
    expect(in_flight).to_have_text("0")

    page.get_by_label("Device type").select_option("dimmer")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#devices tbody tr")).to_have_count(1)

    sent = baton.send("demo-silent-1", "reboot", ttl=120).json()
    page.goto(f"{console}/devices/demo-silent-1")
    expect(page.locator("#in-flight")).to_have_text("1")
    expect(page.locator("#recent")).to_contain_text("reboot")
    page.screenshot(path=shots / "device.png", full_page=True)
    baton.http.post(f"/v1/executions/{sent['id']}/cancel")
    expect(page.locator("#in-flight")).to_have_text("0")  # its event re-read the page
    expect(page.locator("#recent .status").first).to_have_text("CANCELED")

    page.get_by_role("link", name="Device types").click()
    thermostat = page.locator("#type-thermostat")
    expect(thermostat).to_contain_text("set_temperature")
    expect(thermostat).to_contain_text("6 devices")
    page.screenshot(path=shots / "device-types.png", full_page=True)


def test_a_viewer_sees_no_buttons_and_is_refused_anyway(
    browser: Browser, baton: Baton, console: str
) -> None:
    made = baton.http.post("/v1/keys", json={"role": "viewer", "name": "console-viewer"})
    assert made.status_code == 201, made.text
    ended = baton.send("demo-thermostat-5", "reboot", wait=10).json()
    assert ended["status"] == "SUCCEEDED"
    page = signed_in(browser, console, made.json()["key"])

    page.goto(f"{console}/executions/{ended['id']}")
    expect(page.locator("#read-only")).to_contain_text("viewer")
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    page.goto(f"{console}/send?device=demo-thermostat-5&command=reboot")
    expect(page.locator("#read-only")).to_be_visible()
    expect(page.locator("#send-form")).to_have_count(0)

    token = page.locator("input[name=_csrf]").first.input_value()
    refused = page.request.post(
        f"{console}/executions/{ended['id']}/retry", form={"_csrf": token}, max_redirects=0
    )
    assert refused.status == 403
    assert baton.get(ended["id"])["retries"] == []
    page.context.close()


def test_a_phone_sized_screen(browser: Browser, console: str, shots: Path) -> None:
    page = signed_in(browser, console, viewport={"width": 390, "height": 844}, is_mobile=True)
    expect(page.get_by_role("link", name="Devices", exact=True)).to_be_visible()
    expect(page.locator("#executions")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    page.screenshot(path=shots / "phone.png", full_page=False)
    for path in ("/devices", "/device-types", "/send?device=dimmer-1&command=set_level"):
        page.goto(console + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{path} is {width} px wide on a 390 px screen"
    page.context.close()


def test_the_send_form_with_the_keyboard_alone(page: Page, console: str) -> None:
    page.goto(f"{console}/send?device=demo-thermostat-2&command=set_temperature")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    for _ in range(12):  # device, command, Choose, then the params
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "param-value":
            break
    assert page.evaluate("document.activeElement.id") == "param-value"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus is visible
    page.keyboard.type("23")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "ttl"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Send"
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/console/executions/[0-9a-f-]{36}$"))
    expect(page.locator("pre").first).to_contain_text('"value": 23')


def test_the_console_ships_its_own_assets(stack: Stack) -> None:
    script = httpx.get(f"{stack.api_url}/console/static/htmx.min.js", timeout=5)
    assert script.status_code == 200 and "htmx" in script.text
    page = httpx.get(f"{stack.api_url}/console/sign-in", timeout=5)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "//" not in re.sub(r'(href|src)="/console/', "", page.text).split("<body>")[0]

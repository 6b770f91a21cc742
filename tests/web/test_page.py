"""The dashboard page in real Chromium (Debian's package, driven by Playwright) on a real agent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.cli import init_data_dir
from tests.support import RunningAgent, require_binary, start_agent
from tests.web.conftest import seed_earnings

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LIVE_INTERVAL = 1.0
SEEDED_DAYS = 12

# Element id -> path in the section document whose value it shows (data-value).
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "status": {
        "status-version": ("version",),
        "status-node-id": ("node_id",),
        "status-relays": ("services", "relays", "online"),
    },
    "earnings": {
        "earn-today": ("today",),
        "earn-month": ("month",),
        "earn-all": ("all_time",),
        "earn-channels": ("channels",),
    },
    "storage": {
        "storage-used": ("used_bytes",),
        "storage-allocated": ("allocated_bytes",),
        "storage-free": ("free_bytes",),
        "storage-chunks": ("chunks",),
        "score-audit": ("scores", "audit"),
        "score-online": ("scores", "online"),
        "score-suspension": ("scores", "suspension"),
    },
    "network": {"net-sessions": ("sessions",), "net-listen": ("listen",)},
    "hardware": {"hw-temp": ("cpu_temp_c",), "hw-thermal": ("thermal_level",)},
}
MOVING = {"net-sessions"}
CARDS = {
    "earnings": ["card-earnings"],
    "storage": ["card-storage", "card-scores", "card-contracts"],
    "network": ["card-network"],
    "hardware": ["card-hardware"],
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    box = tmp_path_factory.mktemp("page") / "box"
    init_data_dir(box)
    (box / "config.toml").write_text(f"[web]\nlive_interval = {LIVE_INTERVAL}\n")
    seed_earnings(box, days=SEEDED_DAYS)
    running = start_agent(box)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_binary("chromium", "chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, agent: RunningAgent) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    pg.goto(agent.web)
    pg.wait_for_selector("body[data-loaded]")
    yield pg
    context.close()


def api(agent: RunningAgent, path: str) -> Any:
    with urllib.request.urlopen(agent.web + path.lstrip("/"), timeout=10) as resp:
        return json.load(resp)


def dig(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def test_page_loads_clean_and_shows_the_apis_numbers(page: Any, agent: RunningAgent) -> None:
    # What the page rendered, read in one go so no live update can slip in between.
    shown = page.evaluate(
        """(fields) => {
          const out = {last: state.last, values: {}, cards: {}};
          for (const ids of Object.values(fields)) for (const id of Object.keys(ids)) {
            const el = document.getElementById(id);
            out.values[id] = el.dataset.value !== undefined ? el.dataset.value : el.textContent;
          }
          for (const id of ["card-earnings", "card-storage", "card-scores", "card-contracts",
                            "card-network", "card-hardware"]) {
            const c = document.getElementById(id);
            out.cards[id] = {unavailable: c.classList.contains("unavailable"),
                             reason: c.querySelector(".reason").textContent};
          }
          return out;
        }""",
        FIELDS,
    )
    for section, fields in FIELDS.items():
        rendered = shown["last"][section]
        fresh = api(agent, f"/api/{section}")
        assert rendered.get("available", True) == fresh.get("available", True), section
        if rendered.get("available") is False:
            assert fresh["reason"] == rendered["reason"]
            for card in CARDS[section]:
                assert shown["cards"][card] == {
                    "unavailable": True,
                    "reason": f"Not available: {fresh['reason']}",
                }
            continue
        for card in CARDS.get(section, []):
            assert shown["cards"][card]["unavailable"] is False
        for element, path in fields.items():
            # Figures that do not move on an idle test box must agree between the page, its
            # last update and a fresh API answer; moving ones between the first two.
            value = dig(rendered, path)
            if element not in MOVING:
                assert dig(fresh, path) == value, element
            text = shown["values"][element]
            if value is None:
                assert text in ("\u2013", "no sensor"), element
            elif isinstance(value, int | float) and not isinstance(value, bool):
                assert float(text) == pytest.approx(float(value)), element
            else:
                assert text == str(value), element
    if shown["last"]["earnings"].get("available"):
        assert shown["last"]["earnings"]["by_day"] == api(agent, "/api/earnings")["by_day"]
    status = shown["last"]["status"]
    assert status["node_id"] == agent.node_id == api(agent, "/api/status")["node_id"]
    assert page.errors == []


def test_chart_draws(page: Any, agent: RunningAgent) -> None:
    earnings = api(agent, "/api/earnings")
    assert earnings["available"], earnings
    assert len(earnings["by_day"]) == SEEDED_DAYS
    painted = page.evaluate(
        """() => {
          const c = document.querySelector("#earn-chart canvas");
          const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          let series = 0;
          for (let i = 0; i < px.length; i += 4)
            if (px[i + 3] > 0 && ((px[i] === 0x2b && px[i + 1] === 0x8a) ||
                (px[i] === 0xe0 && px[i + 1] === 0xa0) || (px[i] === 0x6a && px[i + 1] === 0x5a)))
              series++;
          return series;
        }"""
    )
    assert painted > 50
    assert page.errors == []


def test_live_update_arrives_without_reload(page: Any) -> None:
    page.wait_for_selector("#live.on")
    before = page.evaluate("Number(document.body.dataset.updates || 0)")
    uptime = page.locator("#status-uptime").get_attribute("data-value")
    page.wait_for_function(
        """([before, uptime]) => Number(document.body.dataset.updates || 0) > before &&
             document.getElementById("status-uptime").dataset.value !== uptime""",
        arg=[before, uptime],
        timeout=15_000,
    )
    assert page.errors == []


def test_action_refused_without_token_then_done_with_it(page: Any, agent: RunningAgent) -> None:
    token = (agent.data_dir / "admin.token").read_text().strip()
    assert api(agent, "/api/hardware")["available"]
    page.click("#form-identify button")
    # No token yet: the page asks for it instead of sending anything.
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token-input", "not-the-token")
    page.click("#token-submit")
    page.wait_for_function(
        "() => document.getElementById('action-result').textContent.startsWith('Refused')"
    )
    assert "wrong admin token" in page.inner_text("#action-result")
    assert page.evaluate("sessionStorage.length") == 0
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token-input", token)
    page.click("#token-submit")
    page.wait_for_function(
        """() => {
          const t = document.getElementById("action-result").textContent;
          return t !== "" && !t.startsWith("Enter") && !t.startsWith("Refused: wrong");
        }"""
    )
    assert page.inner_text("#action-result") == "the LEDs blink for 10 s"
    # What the action caused reaches the open page through the live feed: the event, and
    # the hardware card showing the LEDs in identify mode.
    page.wait_for_selector("#events li:has-text('the LEDs blink for 10 s')", timeout=15_000)
    page.wait_for_selector("#hw-leds:has-text('identifying')", timeout=15_000)
    # The token never lands in the page or in storage unless the owner asks for it.
    assert token not in page.content()
    assert page.evaluate("sessionStorage.length") == 0
    # The refused attempt's 401 is shown as a result; Chromium also logs it to the console.
    assert [e for e in page.errors if "401" not in e] == []


def test_remembered_token_pause_resume_and_live_limits(page: Any, agent: RunningAgent) -> None:
    assert api(agent, "/api/storage")["available"]
    token = (agent.data_dir / "admin.token").read_text().strip()
    page.click("#btn-pause")
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token-input", token)
    page.check("#token-remember")
    page.click("#token-submit")
    page.wait_for_function(
        "() => document.getElementById('action-result').textContent === 'storage paused'"
    )
    assert page.evaluate("sessionStorage.length") == 1
    assert api(agent, "/api/status")["limits"]["refuse_uploads"] is True
    # The agent's new work limits reach the open page through the live feed.
    page.wait_for_function(
        "() => document.getElementById('status-limits').textContent.includes('refuse_uploads')",
        timeout=15_000,
    )
    page.click("#btn-resume")
    page.wait_for_function(
        "() => document.getElementById('action-result').textContent === 'storage resumed'"
    )
    assert page.locator("#token-form").is_hidden()
    assert api(agent, "/api/status")["limits"]["refuse_uploads"] is False
    assert page.errors == []


def test_earnings_export_downloads(page: Any, agent: RunningAgent) -> None:
    assert api(agent, "/api/earnings")["available"]
    for fmt in ("csv", "json"):
        with page.expect_download() as info:
            page.click(f"#export-{fmt}")
        download = info.value
        assert download.suggested_filename.endswith(f".{fmt}")
        with urllib.request.urlopen(f"{agent.web}api/earnings/export?format={fmt}") as resp:
            assert Path(download.path()).read_bytes() == resp.read()


def test_screenshots_phone_and_laptop(browser: Any, agent: RunningAgent) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height, name in ((390, 844, "phone"), (1280, 800, "laptop")):
        context = browser.new_context(viewport={"width": width, "height": height})
        pg = context.new_page()
        pg.goto(agent.web)
        pg.wait_for_selector("body[data-loaded]")
        pg.wait_for_selector("#live.on")
        out = ARTIFACTS / f"dashboard-{name}-{width}x{height}.png"
        pg.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000
        # Nothing sticks out sideways on a phone.
        assert pg.evaluate("document.documentElement.scrollWidth") <= width
        context.close()


# Runs the real CLI with some services left out of build_services, as a box of a version
# without them would run.
WITHOUT = """
import sys
import node.agent as agent
skip = set(sys.argv[1].split(","))
build = agent.build_services
agent.build_services = lambda ctx: [s for s in build(ctx) if s.name not in skip]
from node.cli import main
main(sys.argv[2:])
"""


def test_cards_say_why_when_services_are_missing(browser: Any, tmp_path: Path) -> None:
    box = tmp_path / "box"
    init_data_dir(box)
    cmd = [sys.executable, "-c", WITHOUT, "storage,hwmon", "run", "--data-dir", str(box),
           "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        web = ""
        deadline = time.monotonic() + 30
        while not web and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "agent exited"
            if m := re.match(r"dashboard: (\S+)", line.strip()):
                web = m.group(1)
        context = browser.new_context(viewport={"width": 390, "height": 844})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.goto(web)
        pg.wait_for_selector("body[data-loaded]")
        for section, cards in CARDS.items():
            with urllib.request.urlopen(f"{web}api/{section}", timeout=10) as resp:
                doc = json.load(resp)
            for card in cards:
                reason = pg.locator(f"#{card} .reason")
                if section == "network":
                    assert doc["available"] is True
                    assert reason.is_hidden()
                    continue
                assert doc["available"] is False
                assert reason.inner_text() == f"Not available: {doc['reason']}"
                assert pg.locator(f"#{card} .body").is_hidden()
        # Nothing made up: no figure of a missing section is on the page.
        assert pg.locator("#earn-today").get_attribute("data-value") is None
        assert pg.locator("#earn-chart canvas").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(
            path=str(ARTIFACTS / "dashboard-missing-services-390x844.png"), full_page=True
        )
        context.close()
        assert errors == []
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_follows_an_agent_restart(browser: Any, tmp_path: Path) -> None:
    import socket

    box = tmp_path / "box"
    init_data_dir(box)
    (box / "config.toml").write_text(f"[web]\nlive_interval = {LIVE_INTERVAL}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = start_agent(box, ["--web", f"127.0.0.1:{port}"])
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.goto(first.web)
        pg.wait_for_selector("#live.on")
        started = pg.evaluate("state.last.status.started_at")
        assert first.stop() == 0
        pg.wait_for_selector("#live.off")
        second = start_agent(box, ["--web", f"127.0.0.1:{port}"])
        try:
            # EventSource reconnects by itself; the page then shows the new run.
            pg.wait_for_function(
                "(t) => state.last.status.started_at > t && "
                "document.getElementById('live').classList.contains('on')",
                arg=started,
                timeout=30_000,
            )
            # The event list is the new run's, not the old one's.
            pg.wait_for_function(
                "() => state.events.size > 0 && [...state.events.values()].every("
                "(e) => e.ts >= state.last.status.started_at)"
            )
            assert pg.locator("#events li:has-text('started')").count() == 1
        finally:
            second.stop()
    finally:
        context.close()

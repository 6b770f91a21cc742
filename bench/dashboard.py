"""The dashboard's cost: page weight, time to first render, API latency, agent CPU.

Starts a real agent (``bitchat-node run``, every service of this tree, a ledger with two weeks
of real signed vouchers so the chart has data) and measures in one run:

- page weight: bytes transferred for the first load in Chromium (Playwright's per-request
  sizes: headers + encoded bodies; the live event stream is left out), and uncompressed;
- time to first render: first contentful paint, and the moment every card is filled from the
  API (``performance.mark("dashboard-filled")``);
- API latency: 50 concurrent aiohttp clients issuing a fixed number of GETs across the JSON
  endpoints; p50/p99/max;
- agent CPU: psutil ``cpu_times`` of the agent over a window with one page open (live updates
  running), next to the same window with no page open.

Run: ``.venv/bin/python -m bench.dashboard [--requests 5000] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from node.cli import init_data_dir
from tests.support import RunningAgent, start_agent
from tests.web.conftest import seed_earnings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ENDPOINTS = [
    "api/status", "api/earnings", "api/storage", "api/network", "api/hardware",
    "api/events?limit=50",
]  # fmt: skip
TARGET_WEIGHT_KB = 150.0
TARGET_CPU_PERCENT = 2.0


def page_load(agent: RunningAgent) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 390, "height": 844})
            page = context.new_page()
            finished: list[Any] = []
            page.on("requestfinished", lambda req: finished.append(req))
            page.goto(agent.web)
            page.wait_for_selector("body[data-loaded]")
            page.wait_for_load_state("networkidle")
            transferred = uncompressed = 0
            for req in finished:
                sizes = req.sizes()
                transferred += sizes["responseHeadersSize"] + sizes["responseBodySize"]
                resp = req.response()
                if resp is not None:
                    uncompressed += len(resp.body())
            timing = page.evaluate(
                """() => ({
                  fcp: (performance.getEntriesByName("first-contentful-paint")[0] || {}).startTime,
                  filled: performance.getEntriesByName("dashboard-filled")[0].startTime,
                })"""
            )
            context.close()
        finally:
            browser.close()
    return {
        "requests": float(len(finished)),
        "transferred_kb": transferred / 1024,
        "uncompressed_kb": uncompressed / 1024,
        "fcp_ms": float(timing["fcp"] or 0.0),
        "filled_ms": float(timing["filled"]),
    }


async def api_latency(base: str, total: int, clients: int = 50) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            path = ENDPOINTS[i % len(ENDPOINTS)]
            began = time.perf_counter()
            async with session.get(base + path) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - began)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": float(len(latencies)),
        "errors": float(errors),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "max_ms": latencies[-1] * 1000,
        "per_s": len(latencies) / elapsed,
    }


def cpu_percent(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def cpu_with_page(agent: RunningAgent, seconds: float) -> float:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(agent.web)
            page.wait_for_selector("#live.on")
            time.sleep(2.0)
            return cpu_percent(agent.process.pid, seconds)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="API requests in total")
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU window per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp) / "box"
        init_data_dir(box)
        seed_earnings(box, days=14)
        agent = start_agent(box)
        try:
            time.sleep(2.0)
            load = page_load(agent)
            lat = asyncio.run(api_latency(agent.web, args.requests))
            time.sleep(2.0)
            idle = cpu_percent(agent.process.pid, args.seconds)
            with_page = cpu_with_page(agent, args.seconds)
        finally:
            agent.stop()
    rows = [
        ("page weight, transferred (gzip)", f"{load['transferred_kb']:.1f} KB",
         f"<= {TARGET_WEIGHT_KB:.0f} KB"),
        ("page weight, uncompressed", f"{load['uncompressed_kb']:.1f} KB", ""),
        ("requests for the first load", f"{load['requests']:.0f}", ""),
        ("first contentful paint", f"{load['fcp_ms']:.0f} ms", ""),
        ("every card filled from the API", f"{load['filled_ms']:.0f} ms", ""),
        (f"API p50, 50 clients, {lat['requests']:.0f} GETs", f"{lat['p50_ms']:.1f} ms", ""),
        ("API p99, 50 clients", f"{lat['p99_ms']:.1f} ms", ""),
        ("API max, 50 clients", f"{lat['max_ms']:.1f} ms", ""),
        ("API throughput", f"{lat['per_s']:.0f} req/s", ""),
        ("API errors", f"{lat['errors']:.0f}", "0"),
        (f"agent CPU, no page ({args.seconds:.0f} s)", f"{idle:.2f} % of a core", ""),
        (f"agent CPU, one page open ({args.seconds:.0f} s)", f"{with_page:.2f} % of a core",
         f"<= {TARGET_CPU_PERCENT:.0f} %"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'measured':>18}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>18}  {target}")


if __name__ == "__main__":
    main()

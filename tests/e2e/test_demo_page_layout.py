"""The demo page explains itself in headless Chromium: a late viewer sees a whole run, a kill
fault stays in the fault panel with its cost and outcome, and the page fits 1280-1920 px."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from sagemem.services import ServiceEndpoints
from tests.e2e.test_demo_browser import CHROMIUM_ARGS
from tests.integration.test_demo_server import DemoProcess, http_json, start_demo

WAIT_MS: Final = 60_000
POLL_MS: Final = 200


@pytest.fixture
async def browser(chromium_path: Path, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A headless Chromium of its own (profile in tmp_path), closed after the test."""
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(chromium_path),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


async def _stopped_cleanly(demo: DemoProcess) -> None:
    code, stderr = await demo.stop()
    assert code == 0, stderr[-3000:]


async def _open(context: BrowserContext, port: int) -> Page:
    page = await context.new_page()
    await page.goto(f"http://localhost:{port}/", timeout=WAIT_MS)
    return page


async def test_page_opened_after_the_run_replays_it_from_its_start(
    service_endpoints: ServiceEndpoints, browser: BrowserContext
) -> None:
    """A page opened once the run has finished (heartbeats still arriving) shows the run's first
    round in the timeline, agents' L1 states other than I, and the converged marker."""
    demo = await start_demo(
        service_endpoints, "--no-wait-for-viewer", "--delay-ms", "20", "--rounds", "2"
    )
    try:
        first = await _open(browser, demo.port)  # an early viewer, to know when the run ends
        await first.wait_for_selector("#status:has-text('finished')", timeout=WAIT_MS)
        await first.close()
        late = await _open(browser, demo.port)
        await late.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
        timeline = await late.inner_text("#timeline")
        assert "run 1 (coherent, 2 agents)" in timeline.splitlines()[0]
        assert "round 1/2" in timeline
        assert "set(belief:" in timeline or "update(belief:" in timeline
        states = await late.locator(".agent .st").all_inner_texts()
        assert states
        assert set(states) != {"I"}, states
        status, state = await http_json(demo.port, "GET", "/api/state")
        assert status == 200
        assert state["run"]["status"] == "finished"  # type: ignore[index]
    finally:
        await _stopped_cleanly(demo)


async def test_first_run_waits_for_the_first_viewer(
    service_endpoints: ServiceEndpoints, browser: BrowserContext
) -> None:
    """By default the run is ready but paused until a page connects, then plays from round 1."""
    demo = await start_demo(service_endpoints, "--delay-ms", "20", "--rounds", "2")
    try:
        status, state = await http_json(demo.port, "GET", "/api/state")
        assert status == 200
        run = state["run"]
        assert isinstance(run, dict)
        assert (run["paused"], run["round"]) == (True, 0)
        page = await _open(browser, demo.port)
        await page.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
        assert "round 1/2" in await page.inner_text("#timeline")
    finally:
        await _stopped_cleanly(demo)


async def test_kill_fault_stays_in_the_fault_panel_with_cost_and_outcome(
    service_endpoints: ServiceEndpoints, browser: BrowserContext
) -> None:
    """After "Kill agent holding M" the fault panel keeps the kill with the lost Modified data,
    the time to recover and the outcome, also after the run has gone on and finished, and in a
    page opened afterwards."""
    demo = await start_demo(
        service_endpoints, "--no-autostart", "--delay-ms", "60", "--rounds", "4"
    )
    try:
        page = await _open(browser, demo.port)
        await page.wait_for_selector("#status:has-text('run 1')", timeout=WAIT_MS)
        await page.click("#start")
        await page.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
        await page.click("#fault-kill")
        row = "#faults tr[data-fault='kill'][data-recovered='true']"
        await page.wait_for_selector(row, timeout=WAIT_MS)
        await page.wait_for_selector("#status:has-text('finished')", timeout=WAIT_MS)
        text = await page.inner_text(row)
        assert "lost belief:" in text
        assert "recovered: every agent agrees with the home again" in text
        assert "never written back" in text
        later = await _open(browser, demo.port)
        await later.wait_for_selector(row, timeout=WAIT_MS)
        assert await later.inner_text(row) == text
    finally:
        await _stopped_cleanly(demo)


async def test_page_fits_the_window_without_horizontal_scrolling(
    service_endpoints: ServiceEndpoints, browser: BrowserContext
) -> None:
    """At 1280 and 1920 px, after a run with a fault, nothing is wider than the window and the
    control bar is one line."""
    demo = await start_demo(
        service_endpoints, "--no-wait-for-viewer", "--delay-ms", "20", "--rounds", "2"
    )
    try:
        page = await _open(browser, demo.port)
        await page.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
        await page.click("#fault-kill")
        await page.wait_for_selector("#faults tr[data-fault='kill']", timeout=WAIT_MS)
        await page.wait_for_selector("#status:has-text('finished')", timeout=WAIT_MS)
        for width in (1280, 1920):
            await page.set_viewport_size({"width": width, "height": 900})
            overflow = await page.evaluate(
                """() => ({
                    page: document.documentElement.scrollWidth - window.innerWidth,
                    sections: [...document.querySelectorAll('main > *')]
                        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.id || e.tagName),
                    oneLine: (() => {
                        const boxes = [...document.querySelectorAll('header > *')]
                            .map(e => e.getBoundingClientRect());
                        return Math.max(...boxes.map(b => b.top)) <
                            Math.min(...boxes.map(b => b.bottom));
                    })(),
                })"""
            )
            assert overflow["page"] <= 0, (width, overflow)
            assert overflow["sections"] == [], (width, overflow)
            assert overflow["oneLine"] is True, (width, overflow)
    finally:
        await _stopped_cleanly(demo)

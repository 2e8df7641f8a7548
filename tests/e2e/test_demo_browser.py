"""The live demo in real headless Chromium: start a run, see an invalidation and convergence."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from playwright.async_api import async_playwright

from sagemem.services import ServiceEndpoints
from tests.integration.test_demo_server import start_demo

# What this machine's Chromium needs headless (no sandbox as root, no calls home on a closed
# network); Playwright adds --headless itself.
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS: Final = 45_000
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


async def test_page_shows_invalidation_and_convergence(
    service_endpoints: ServiceEndpoints, chromium_path: Path, tmp_path: Path
) -> None:
    """Pressing Start shows a delivered invalidation, then the converged marker; screenshot."""
    demo = await start_demo(
        service_endpoints, "--no-autostart", "--delay-ms", "120", "--rounds", "3"
    )
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(chromium_path),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1500, "height": 1000},
            )
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                await page.goto(f"http://localhost:{demo.port}/", timeout=WAIT_MS)
                await page.wait_for_selector("#status:has-text('run 1')", timeout=WAIT_MS)
                await page.click("#start")
                await page.wait_for_selector(
                    "#messages [data-type='INVALIDATE'][data-phase='delivered']",
                    timeout=WAIT_MS,
                )
                await page.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
                marker = await page.inner_text("#converged")
                assert "Converged" in marker
                states = await page.locator(".agent .st").all_inner_texts()
                assert states, "no L1 entry is drawn"
                shot = tmp_path / "demo.png"
                await page.screenshot(path=str(shot), full_page=True)
                await page.reload()  # a reconnecting page redraws from a fresh snapshot
                await page.wait_for_selector("#converged[data-converged='true']", timeout=WAIT_MS)
                assert await page.locator(".agent").count() == 2
            finally:
                await context.close()
    finally:
        code, stderr = await demo.stop()
    assert code == 0, stderr[-3000:]
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000

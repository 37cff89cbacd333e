"""The operator console (`GET /`) in a real headless browser: Debian's Chromium, driven by
Playwright's Python package (Playwright cannot download its own browser here; `.ci/run`
installs `chromium` with apt when it is missing)."""

from __future__ import annotations

import asyncio
import os
import shutil

import grpc
import pytest
from playwright.async_api import async_playwright, expect

from shared import wire
from shared.model import SessionState, StopCode
from tests.conftest import WAIT_S, Gate, RawSession, running_dispatcher, wait_until
from tests.integration.test_approval import approval_tools
from tests.integration.test_control import pool_commanders
from tests.integration.test_gateway import GATEWAY_ID, running_gateway

pytestmark = pytest.mark.anyio

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Skipped only on a developer's machine without it; CI (.ci/run) installs it, and fails without it.
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)",
)


@needs_chromium
async def test_the_console_shows_a_live_session_and_stops_it_with_the_operators_reason() -> None:
    async with (
        running_dispatcher() as d,
        pool_commanders(d, 1, tokens_per_s=100, answer_words=10_000) as results,
        running_gateway(d.address, list_refresh_s=0.1) as gw,
        grpc.aio.insecure_channel(d.address) as ch,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            await page.goto(gw.url + "/")
            await expect(page.locator("#link")).to_have_text("live", timeout=WAIT_S * 1000)
            # A backend starts a session; the table shows it from its stream (no reload, no polling).
            call = wire.SessionControlServiceStub(ch).StartSession(
                wire.ctl.StartSessionRequest(input_text="tell me a long story", session_id="console-1")
            )
            await asyncio.wait_for(call.read(), WAIT_S)
            row = page.locator('#sessions tr[data-session-id="console-1"]')
            await expect(row).to_contain_text("ACTIVE", timeout=WAIT_S * 1000)
            await row.click()
            await expect(page.locator("#answer")).not_to_be_empty(timeout=WAIT_S * 1000)
            await expect(page.locator("#thoughts")).to_contain_text("[understand]")
            await expect(page.locator("#tools")).to_contain_text("echo")  # the call, then its result
            await expect(page.locator("#tools")).to_contain_text("→")
            await page.fill("#stop-reason", "operator says: enough")
            await page.click("#stop-button")
            confirmation = page.locator("#stop-result")
            await expect(confirmation).to_contain_text("Stop confirmed by the commander in", timeout=WAIT_S * 1000)
            await expect(confirmation).to_contain_text(f"gateway:{GATEWAY_ID}")
            await expect(confirmation).to_contain_text("http:127.0.0.1:")
            await expect(page.locator("#stop-info")).to_contain_text("operator says: enough")
            await expect(page.locator("#outcome")).to_contain_text("Ended STOPPED")
            await expect(row).to_contain_text("STOPPED")
            assert not problems, problems
        finally:
            await browser.close()
        await wait_until(lambda: len(results) == 1, "the commander's session ended")
        result = results[0]
        assert result.state is SessionState.STOPPED and result.stop is not None
        assert result.stop.code is StopCode.OPERATOR and result.stop.reason == "operator says: enough"
        assert result.stop.path[0].startswith("http:127.0.0.1:") and result.stop.path[1] == f"gateway:{GATEWAY_ID}"
        call.cancel()


@needs_chromium
async def test_the_console_approves_a_waiting_tool_call() -> None:
    async with (
        running_dispatcher(tools=approval_tools(Gate())) as d,
        running_gateway(d.address, list_refresh_s=0.1) as gw,
        grpc.aio.insecure_channel(d.address) as ch,
        async_playwright() as playwright,
    ):
        raw = RawSession(ch)
        await raw.hello("approve-1")
        await raw.tool_call(2, "guarded", '{"x": 1}', call_id="c1")
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(gw.url + "/")
            await page.locator('#sessions tr[data-session-id="approve-1"]').click(timeout=WAIT_S * 1000)
            item = page.locator("#tool-c1")
            await expect(item).to_contain_text("waits for approval", timeout=WAIT_S * 1000)
            await item.get_by_role("button", name="Approve").click()
            await expect(item).to_contain_text("approved by operator:anonymous", timeout=WAIT_S * 1000)
            await expect(item).to_contain_text('"ran":true')  # the tool ran: its result is in the transcript
        finally:
            await browser.close()
        result = await raw.recv_kind("tool_result")
        assert '"ran": true' in result.tool_result.result_json or '"ran":true' in result.tool_result.result_json
        raw.call.cancel()

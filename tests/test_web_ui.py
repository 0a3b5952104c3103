"""The Temporal Web UI of the dev server shows an invocation readably, checked in a headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import urllib.parse

import pytest
from temporalio.client import Client

from multinode import get_deployed_function
from multinode._settings import MultinodeSettings
from multinode.control_plane.devserver import DevServer
from multinode.errors import InvocationCancelledError
from tests.helpers import assert_eventually
from tests.test_progress import GUIDE_PROGRESS

playwright_sync_api = pytest.importorskip("playwright.sync_api")
expect = playwright_sync_api.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000
"""Per page load and expectation: the UI's first load in Chromium takes seconds of CPU, many more when loaded."""
RUNNING = re.compile(r"^\s*running\s*$", re.IGNORECASE)  # the status badge says "Running", shown upper-case

FUNCTION = "slowly_calculate_sum_of_squares"  # the guide's progress example, as in test_progress


async def _run_id_once_signalled_progress(settings: MultinodeSettings, invocation_id: str) -> str | None:
    """The workflow's run id once its own state (which its current details show) has 2 terms or more."""
    client = await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    handle = client.get_workflow_handle(invocation_id)
    progress = await handle.query("progress")  # follows progress signals, which lag the heartbeats `.get` reads
    if (progress or {}).get("num_terms_incorporated", 0) < 2:
        return None
    return (await handle.describe()).run_id


@pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium binary (Debian: apt-get install chromium)")
@pytest.mark.timeout(300)
def test_web_ui_shows_status_and_progress(
    register, project_name: str, settings: MultinodeSettings, dev_server: DevServer
) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, FUNCTION)
    invocation_id = fn.start(600)
    try:
        assert_eventually(
            lambda: (fn.get(invocation_id).result or {}).get("num_terms_incorporated", 0) >= 2, timeout=60
        )
        run_id = assert_eventually(
            lambda: asyncio.run(_run_id_once_signalled_progress(settings, invocation_id)), timeout=30
        )
        assert_eventually(lambda: invocation_id in fn.list().invocation_ids, timeout=30)  # visible to list queries

        base = f"http://127.0.0.1:{dev_server.ui_port}/namespaces/default/workflows"
        with playwright_sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(UI_TIMEOUT_MS)
                expect.set_options(timeout=UI_TIMEOUT_MS)

                # The workflows list, filtered by our search attributes, shows the invocation as running.
                query = f'MultinodeProject="{project_name}" AND MultinodeFunction="{FUNCTION}"'
                page.goto(f"{base}?query={urllib.parse.quote(query)}")
                row = page.get_by_test_id("workflows-summary-configurable-table-row").filter(has_text=invocation_id)
                expect(row).to_have_count(1)
                expect(row).to_contain_text("MultinodeInvocation")
                expect(row.get_by_test_id("execution-status")).to_have_text(RUNNING)
                link = row.locator(f'a[href*="/workflows/{invocation_id}/"]').first
                expect(link).to_have_attribute("href", re.compile(f"/workflows/{invocation_id}/{run_id}/"))

                # The workflow's page: status badge, then each tab that carries Multinode's status or progress.
                page.goto(f"{base}/{invocation_id}/{run_id}/history")
                expect(page.get_by_test_id("workflow-id-heading")).to_contain_text(invocation_id)
                expect(page.get_by_test_id("execution-status")).to_have_text(RUNNING)

                page.get_by_test_id("user-metadata-tab").click()
                expect(page).to_have_url(re.compile(r"/user-metadata$"))
                summary = page.frame_locator("#user-metadata-summary").locator("body")
                expect(summary).to_contain_text(f"{project_name}.{FUNCTION} (v1)")
                details = page.frame_locator("#user-metadata-current-details")
                expect(details.locator("strong")).to_have_text("Multinode RUNNING")  # markdown rendered as bold
                expect(details.locator("body")).to_contain_text(f"{project_name}.{FUNCTION}")
                shown = details.locator("code")
                expect(shown).to_contain_text(re.compile(r'"num_terms_incorporated": \d+'))
                progress = json.loads(shown.inner_text())
                assert progress["num_terms_incorporated"] >= 2 and progress["sum_so_far"] >= 1, progress

                page.get_by_test_id("pending-activities-tab").click()
                expect(page).to_have_url(re.compile(r"/pending-activities$"))
                main = page.locator("main")
                expect(main).to_contain_text("multinode.run_function")
                expect(main).to_contain_text("Heartbeat Details")
                expect(main).to_contain_text(re.compile(r'num_terms_incorporated\\?": \d+'))

                page.get_by_test_id("search-attributes-tab").click()
                expect(page).to_have_url(re.compile(r"/search-attributes$"))
                expect(main).to_contain_text('"MultinodeStatus": "RUNNING"')
                expect(main).to_contain_text(f'"MultinodeFunction": "{FUNCTION}"')
                expect(main).to_contain_text(f'"MultinodeProject": "{project_name}"')
            finally:
                browser.close()
    finally:
        fn.cancel(invocation_id)
        with pytest.raises(InvocationCancelledError):
            fn.await_result(invocation_id, timeout=60)

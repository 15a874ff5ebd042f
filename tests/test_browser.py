"""The notebooks in a real browser: JupyterLab on a free loopback port, driven by Playwright with Debian's
Chromium. Runs notebook 01, drags a cost slider and checks the costs and break-even on screen change; runs
notebook 02 and checks the validator's table is shown. Screenshots go to ``test-artifacts/browser/``."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import REPO
from server_harness import free_port

from helpers.settings import settings

pytestmark = pytest.mark.browser
CHROMIUM = settings().chromium
ARTIFACTS = REPO / "test-artifacts" / "browser"
RUN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ (the committed ones are never touched), with settings of its own."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: run `make test` (it installs Debian's chromium) or set WORKBOOK_CHROMIUM.")
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))  # render every cell
    apputils = root / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "WORKBOOK_METRICS_DIR": str(root / "metrics"),
           "WORKBOOK_SERVER_DIR": str(root / "server"), "WORKBOOK_PORT": str(free_port()),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(root / "lab.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                                f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root / 'notebooks'}",
                                "--LabApp.news_url=None", *(["--allow-root"] if os.geteuid() == 0 else [])], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/status?token={token}", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, f"JupyterLab did not start; see {log.name}"
        time.sleep(0.5)
    yield {"url": url, "token": token}
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def idle(page) -> None:
    """Wait until the kernel has nothing left to do (widget updates included)."""
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle")).wait_for(timeout=120_000)


def open_and_run_all(browser, lab, name: str):
    """Open a notebook in JupyterLab, Run > Run All Cells, and wait until every code cell has run."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own, reset: only this notebook is open (no tab restored from an earlier test)
    page.goto(f"{lab['url']}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={lab['token']}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle")).wait_for(timeout=120_000)  # kernel ready
    # the committed notebook shows a stored run: clear it, so that every prompt number seen below is from this run
    page.get_by_role("menuitem", name="Edit", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Clear Outputs of All Cells")).click()
    page.wait_for_function("""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                                    .every(p => !/\\d/.test(p.textContent))""", timeout=30_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
    code_cells = page.locator(".jp-Notebook .jp-CodeCell").count()
    page.wait_for_function(
        """n => { const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                  .map(p => p.textContent.trim());
                  return prompts.length === n && prompts.every(t => /^\\[\\d+\\]:$/.test(t)); }""",
        arg=code_cells, timeout=RUN_TIMEOUT_MS)
    idle(page)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] :text('Traceback')")
    assert errors.count() == 0, errors.first.inner_text()
    return page


def test_01_cost_slider_changes_the_costs_and_break_even_on_screen(browser, lab):
    page = open_and_run_all(browser, lab, "01_when_to_fine_tune")
    summary = page.locator(".widget-html-content", has_text="queries/month").first
    summary.wait_for(timeout=60_000)
    summary.scroll_into_view_if_needed()
    before = summary.inner_text()
    page.screenshot(path=str(ARTIFACTS / "01_before.png"), full_page=False)
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="input tokens per query"))
    readout = slider.locator(".widget-readout")
    start_value = readout.inner_text()
    handle = slider.locator(".noUi-handle")
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2, steps=10)
    page.mouse.up()
    # the cost of prompting is the first figure of the text; it moves with the input tokens
    page.wait_for_function("([el, old]) => el.innerText.split(';')[0] !== old.split(';')[0]",
                           arg=[summary.element_handle(), before], timeout=30_000)
    idle(page)  # the kernel redraws for every value the drag passed through; read the last
    after = summary.inner_text()
    page.screenshot(path=str(ARTIFACTS / "01_after.png"), full_page=False)
    assert readout.inner_text() != start_value
    costs = lambda text: re.findall(r"\$[\d,]+\.\d\d/month", text)  # noqa: E731
    crossings = lambda text: re.findall(r"beats prompting from ([\d,]+) queries/month", text)  # noqa: E731
    assert costs(before) and costs(after) != costs(before), (before, after)
    assert crossings(before) and crossings(after) != crossings(before), (before, after)
    page.close()


def test_02_shows_the_validators_table(browser, lab):
    page = open_and_run_all(browser, lab, "02_data_prep")
    table = page.locator("table.dataframe", has_text="not_utf8").first
    table.wait_for(timeout=60_000)
    table.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "02_validator_table.png"), full_page=False)
    text = table.inner_text()
    assert "invalid_json" in text and "not_utf8" in text
    page.close()

"""The leaderboard as a user sees it: `effbench leaderboard` in a subprocess, Debian's
Chromium driven headless by Playwright. Screenshots land in test-artifacts/."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from effbench.report import fmt
from effbench.store import open_store
from test_leaderboard import INJECTION, tiny_store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lb = tiny_store(tmp_path_factory)
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "leaderboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "effbench.cli", "leaderboard", "--db", lb["url"],
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{base}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"leaderboard did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield {**lb, "base": base}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def _open(page, url: str, ready: str) -> None:
    page.goto(url)
    page.wait_for_selector(ready)
    page.wait_for_load_state("networkidle")


def _shot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main block, so grow the viewport)."""
    time.sleep(1)  # let plots finish their transitions
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1500, "height": min(max(height, 800), 6000)})
    page.screenshot(path=ARTIFACTS / f"leaderboard-{name}.png")
    page.set_viewport_size({"width": 1500, "height": 1100})


def _matching(page, text: str) -> None:
    page.get_by_text(text, exact=True).wait_for()


def test_overview_shows_the_stored_ranks(server, page):
    _open(page, server["base"], "table[data-testid=rank-table]")
    page.locator("[data-testid=stRadio] label").filter(has_text="inference").click()  # the axis
    fp32 = server["ok"]["fp32"]
    row = page.locator(f"tr[data-entry='{fp32.id}']")
    row.wait_for()
    assert row.locator("td").first.inner_text() == "fp32"
    ppl = fmt(fp32.metric("quality.perplexity").value, "")
    cell = row.locator(f"td[title*='quality.perplexity = {ppl}']")
    assert cell.count() == 1 and cell.inner_text().strip() in {"1", "2", "3"}  # a rank, the value on hover
    techniques = page.locator("table[data-testid=rank-table] tbody tr td:first-child").all_inner_texts()
    assert sorted(techniques) == ["bf16", "fp16", "fp32"]
    _shot(page, "overview")


def test_explorer_filters_exports_and_resists_injection(server, page):
    store = open_store(server["url"], read_only=True)
    before = len(store.runs())
    _open(page, f"{server['base']}/explorer", "[data-testid=stDataFrame]")
    _matching(page, f"{before} runs match")
    page.locator(".js-plotly-plot").first.wait_for()
    _shot(page, "explorer")

    page.locator("[data-testid=stMultiSelect]").filter(has=page.get_by_text("technique", exact=True)).click()
    page.get_by_role("option", name="fp32", exact=True).click()
    page.keyboard.press("Escape")
    _matching(page, "2 runs match")  # fp32 ok and fp32 failed
    with page.expect_download() as download:
        page.get_by_text("Download all 2 matching runs (CSV)").click()
    rows = list(csv.DictReader(open(download.value.path())))
    assert sorted(r["id"] for r in rows) == sorted(r.id for r in store.runs(technique="fp32"))

    page.get_by_placeholder("part of a model or technique name").fill(INJECTION)
    page.keyboard.press("Enter")
    _matching(page, "0 runs match")
    _open(page, f"{server['base']}/explorer?technique={quote(INJECTION)}", "[data-testid=stDataFrame]")
    _matching(page, "0 runs match")
    assert len(store.runs()) == before


def test_run_detail_of_a_failed_run(server, page):
    failed = server["failed"]
    _open(page, f"{server['base']}/run?id={failed.id[:8]}", "[data-testid=stDataFrame], [data-testid=stAlert]")
    page.get_by_text("This run failed").wait_for()
    assert "ValueError" in page.locator("[data-testid=stCode]").first.inner_text()
    _shot(page, "run-failed")
    pretrain = server["ok"]["gqa"]
    _open(page, f"{server['base']}/run?id={pretrain.id}", "[data-testid=stDataFrame]")
    page.locator(".js-plotly-plot").first.wait_for()  # the loss curve
    _shot(page, "run")


def test_compare_two_runs(server, page):
    fp32, bf16 = server["ok"]["fp32"], server["ok"]["bf16"]
    _open(page, f"{server['base']}/compare?runs={fp32.id}&runs={bf16.id}", "[data-testid=stDataFrame]")
    page.locator("[data-testid=stCaptionContainer]").filter(has_text=f"Baseline: {fp32.model} × fp32").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    _shot(page, "compare")
    assert os.path.getsize(ARTIFACTS / "leaderboard-compare.png") > 10_000

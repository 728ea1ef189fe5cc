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
from test_leaderboard import DEFECT, INJECTION, tiny_store

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
    _idle(page)


def _shot(page, name: str) -> None:
    """A screenshot of the whole page (Streamlit scrolls inside its main block, so grow the viewport)."""
    time.sleep(1)  # let plots finish their transitions
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1500, "height": min(max(height, 800), 6000)})
    page.screenshot(path=ARTIFACTS / f"leaderboard-{name}.png")
    page.set_viewport_size({"width": 1500, "height": 1100})


def _idle(page) -> None:
    """Wait until the page's script has finished its run (Streamlit's running indicator is gone)."""
    page.wait_for_function("!document.querySelector('[data-testid=stStatusWidgetRunningIcon]')")
    page.wait_for_load_state("networkidle")


def _matching(page, text: str) -> None:
    page.get_by_text(text, exact=True).wait_for()


def _plot_texts(page) -> list[str]:
    """The hover texts of every trace of the plots on the page (plotly keeps them on the element)."""
    return page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(
        p => (p.data || []).flatMap(t => Array.isArray(t.text) ? t.text : []))""")


def _cell(page, entry: str, metric: str):
    return page.locator(f"tr[data-entry='{entry}'] td[data-metric='{metric}']")


def test_overview_values_flags_ties_and_a_one_run_group(server, page):
    _open(page, server["base"], "table[data-testid=group-table]")
    fp32, defect = server["ok"]["fp32"], server["ok"][DEFECT]
    row = page.locator(f"tr[data-entry='{fp32.id}']")
    row.wait_for()  # the inference group opens: it has the most pairs
    assert row.locator("td").first.inner_text().startswith("fp32")
    ppl = fmt(fp32.metric("quality.perplexity").value, "")
    assert _cell(page, fp32.id, "quality.perplexity").inner_text().strip() == ppl  # the value, not a rank
    assert "⚠" in _cell(page, defect.id, "compute.mfu").inner_text()  # the injected impossible MFU
    assert "◔" in _cell(page, fp32.id, "memory.peak_bytes").inner_text()  # runtime-dominated CPU memory
    assert "≈" in _cell(page, fp32.id, "energy.avg_power_w").inner_text()  # estimated CPU energy
    techniques = page.locator("table[data-testid=group-table] tbody tr td:first-child b").all_inner_texts()
    assert sorted(techniques) == ["bf16", DEFECT, "fp16", "fp32"]  # one scenario: no serving run here
    # The widest table fits a 1440 px window: its last column (J/token) is inside the main area.
    page.set_viewport_size({"width": 1440, "height": 1000})
    box = page.locator("table[data-testid=group-table] th").last.bounding_box()
    main = page.locator("[data-testid=stMain]").bounding_box()
    assert box["x"] + box["width"] <= main["x"] + main["width"]
    page.set_viewport_size({"width": 1500, "height": 1100})
    page.get_by_text("Show ranks and colours").click()
    _cell(page, fp32.id, "quality.perplexity").locator("sup").wait_for()
    ranks = {e: _cell(page, e, "quality.perplexity").locator("sup").inner_text() for e in
             (fp32.id, defect.id, server["ok"]["bf16"].id, server["ok"]["fp16"].id)}
    assert set(ranks.values()) == {"#1"}  # deterministic perplexities within 1%: a tie
    assert _cell(page, defect.id, "compute.mfu").locator("sup").count() == 0  # invalid: never ranked
    _shot(page, "overview")
    page.locator("[data-testid=stRadio] label").filter(has_text="architecture").click()
    page.get_by_text("One pair in this group").wait_for()
    assert page.locator("table[data-testid=group-table] sup").count() == 0  # one pair: values, no ranks


def test_explorer_plots_one_view_roofline_and_load_curve(server, page):
    store = open_store(server["url"], read_only=True)
    before = len(store.runs())
    _open(page, f"{server['base']}/explorer", "[data-testid=stDataFrame]")
    _matching(page, f"{before} runs match")
    page.locator(".js-plotly-plot").first.wait_for()
    inference = {r.id[:8] for r in store.runs(scenario="inference")}
    shown = {t.split(" · ")[1].split()[0] for t in _plot_texts(page) if " · " in t}
    assert shown and shown <= inference  # the opening view: inference runs only
    page.get_by_role("tab", name="Roofline").click()
    page.locator(".js-plotly-plot").filter(has_text="Roofline").wait_for()
    _shot(page, "explorer")
    page.get_by_role("tab", name="Load curve").click()
    curve = page.locator(".js-plotly-plot").filter(has_text="Load curve")
    curve.wait_for()
    for run in server["serve"].values():
        assert f"{run.technique} · hf (in-process) · {run.model}" in curve.inner_text()  # a curve per technique

    _idle(page)
    page.locator("[data-testid=stMultiSelect]").filter(has=page.get_by_text("technique", exact=True)).click()
    page.keyboard.type("fp3")  # far down the page, a click alone focuses the box without opening its list
    page.get_by_role("option", name="fp32", exact=True).click()
    page.keyboard.press("Escape")
    _matching(page, "3 runs match")  # fp32 inference, fp32 serve, and the failed one
    # The count shows before the script's run ends; a click on the button during that run
    # can land on an element the run then replaces, and no download starts (seen once in CI).
    _idle(page)
    with page.expect_download() as download:
        page.get_by_text("Download all 3 matching runs (CSV)").click()
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
    pretrain = server["ok"]["gqa"]
    _open(page, f"{server['base']}/run?id={pretrain.id}", "[data-testid=stDataFrame]")
    page.locator(".js-plotly-plot").first.wait_for()  # the loss curve
    _shot(page, "run")


def test_compare_never_judges_across_scenarios(server, page):
    fp32, bf16, served = server["ok"]["fp32"], server["ok"]["bf16"], server["serve"]["fp32"]
    _open(page, f"{server['base']}/compare?runs={fp32.id}&runs={bf16.id}&runs={served.id}",
          "[data-testid=stDataFrame]")
    page.get_by_text("not judged against the baseline — scenario inference ≠ serve").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    bars = {t.split("<br>")[0] for t in page.evaluate(
        "() => document.querySelector('.js-plotly-plot').data[0].x")}
    assert all("· inference ·" in b for b in bars) and len(bars) == 2  # the bars leave the serving run out
    _shot(page, "compare")
    assert os.path.getsize(ARTIFACTS / "leaderboard-compare.png") > 10_000


def test_docs_page_opens_on_a_linked_section(server, page):
    _open(page, f"{server['base']}/docs?doc=metrics&section=impossible-figures", "h2")
    page.get_by_role("heading", name="Impossible figures").wait_for()

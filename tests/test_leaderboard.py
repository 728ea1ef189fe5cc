"""Leaderboard: the ranking rules on hand-made figures, the read-only queries, and every
page (Streamlit AppTest) on a store of real tiny runs, an empty store and a corrupt file."""

from __future__ import annotations

import math
import os
import re
import uuid
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from effbench import compare
from effbench.compare import Figure
from effbench.execute import execute
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.catalog import make_metric
from effbench.metrics.record import Status
from effbench.report import fmt
from effbench.store import open_store
from leaderboard import plots, queries, ranking
from leaderboard.queries import Filters

APP = str(ranking.__file__).replace("ranking.py", "app.py")
PG_URL = os.environ.get("EFFBENCH_TEST_PG_URL")
INJECTION = "x' OR '1'='1"
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=172", "hardware.device=cpu"]
INFERENCE = ["scenario.prompt_tokens=32", "scenario.output_tokens=8", "scenario.repeats=2", "scenario.warmup=1",
             "scenario.eval_max_tokens=1024", "scenario.eval_context=128", *TINY]
PRETRAIN = ["scenario=pretrain", "model=tiny", *TINY, "scenario.token_budget=2048", "scenario.seq_len=32",
            "scenario.micro_batch_size=4", "scenario.eval_every=5", "scenario.warmup_steps=2",
            "scenario.eval_tokens=512", "technique=gqa", "technique.options.num_kv_heads=2"]
FINETUNE = ["scenario=finetune", "model=tiny", *TINY, "technique=lora", "scenario.seq_len=128",
            "scenario.micro_batch_size=2", "scenario.max_steps=4", "scenario.warmup_steps=1", "scenario.eval_every=2",
            "scenario.eval_samples=2", "scenario.final_eval_samples=4", "scenario.save_artifact=false"]
# In-process serving with a rate sweep (the load curve): a few short requests per rate.
SERVE = ["scenario=serve", *TINY, "scenario.num_requests=6", "scenario.prompt_tokens=16", "scenario.output_tokens=4",
         "scenario.repeats=2", "scenario.rate=8", "scenario.rates=[2,8]"]
# One crash: a prompt longer than the held-out text (as in test_cli).
FAILING = ["scenario.prompt_tokens=10000000", *INFERENCE[1:], "technique=fp32"]
# An impossible MFU injected into a copy of the bf16 run: stored flagged invalid, never ranked.
DEFECT = "bf16-defect"

_built: dict[str, dict] = {}


def tiny_store(tmp_path_factory) -> dict:
    """Built once per session (the browser test shares it), all four scenarios: three tiny
    inference runs (fp32, bf16, fp16), one pretraining run (gqa), one fine-tuning run (lora),
    two serving runs with a rate sweep (fp32, bf16), one failed run, and a copy of the bf16
    inference run with an injected impossible MFU (technique bf16-defect)."""
    if not _built:
        root = tmp_path_factory.mktemp("leaderboard")
        url = f"sqlite:///{root}/store.db"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EFFBENCH_ARTIFACTS", str(root / "artifacts"))
            for overrides in ([*INFERENCE, "technique=fp32"], [*INFERENCE, "technique=bf16"],
                              [*INFERENCE, "technique=fp16"], PRETRAIN, FINETUNE, [*SERVE, "technique=fp32"],
                              [*SERVE, "technique=bf16"], FAILING):
                with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
                    cfg = compose("config", overrides=[*overrides, f"store.url={url}", "tags=[lbtest]"])
                execute(cfg)
        with open_store(url) as store:
            bf16 = next(r for r in store.runs(technique="bf16") if r.scenario == "inference")
            defect = replace(bf16, id=uuid.uuid4().hex, technique=DEFECT, metrics=[
                make_metric(m.name, 5.0, m.source, note="injected") if m.name == "compute.mfu" else m
                for m in bf16.metrics])
            store.write(defect)
        runs = open_store(url, read_only=True).runs()
        ok = [r for r in runs if r.status is Status.OK]
        _built.update(url=url, path=root / "store.db", runs=runs,
                      ok={r.technique: r for r in ok if r.scenario in ("inference", "pretrain", "finetune")},
                      serve={r.technique: r for r in ok if r.scenario == "serve"},
                      failed=next(r for r in runs if r.status is Status.FAILED))
    return _built


@pytest.fixture(scope="session")
def lb(tmp_path_factory):
    return tiny_store(tmp_path_factory)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, lb):
    """The tiny runs' store: the SQLite file, or a copy in a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield lb["url"]
        return
    if not PG_URL:
        pytest.skip("EFFBENCH_TEST_PG_URL is not set")
    admin, schema = create_engine(PG_URL), f"lb_{uuid.uuid4().hex}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))  # a name made here, not input
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    with open_store(url) as store:
        for run in lb["runs"]:
            store.write(run)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def app(url: str, monkeypatch, page: str | None = None, **query) -> AppTest:
    monkeypatch.setenv("EFFBENCH_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=60)
    if page:
        at.switch_page(page)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def texts(at: AppTest) -> str:
    """Everything a page wrote as text: titles, markdown, captions, alerts, code, HTML."""
    kinds = ("title", "subheader", "markdown", "caption", "error", "info", "warning", "code")
    return "\n".join([e.value for kind in kinds for e in getattr(at, kind)] + [e.proto.body for e in at.get("html")])


# ------------------------------------------------------------------------- ranking rules


def test_size_buckets_split_the_papers_model_scales():
    assert ranking.size_bucket(148_288) == "<10M"
    assert ranking.size_bucket(0.49e9) == "100M–1B"  # Qwen2.5-0.5B
    assert ranking.size_bucket(1.54e9) == "1B–2B"  # 1.5B
    assert ranking.size_bucket(3.09e9) == ranking.size_bucket(3.8e9) == "2B–5B"  # 3B, docs/spec.md's 3.8B
    assert ranking.size_bucket(1e9) == "1B–2B"  # upper bounds are exclusive
    assert ranking.size_bucket(None) == ranking.size_bucket(math.nan) == ranking.UNKNOWN_SIZE


def test_ties_share_the_rank_of_their_groups_best_entry():
    # Lower is better, threshold 5%. b ties a (inside a's interval); c is outside a's interval
    # and a outside c's, beyond 5%: c starts a new tie group at its position (3), it does not
    # chain onto a through b. d is far off.
    figs = [Figure(v, (lo, hi), 8) for v, lo, hi in ((1.0, 0.5, 1.5), (1.4, 1.2, 1.6), (1.7, 1.55, 1.8),
                                                     (10.0, 9.0, 11.0))]
    assert list(ranking.tie_ranks(figs, False, 0.05)) == [1, 1, 3, 4]
    # Higher is better: d leads alone; c leads the next group; b is outside c's interval and c
    # outside b's (the intervals overlap, the figures do not fall in each other's): rank 3; a ties b.
    assert list(ranking.tie_ranks(figs, True, 0.05)) == [3, 3, 2, 1]
    # Exact figures within the threshold tie (perplexity 390.4 / 390.5 at 1%); beyond it, they don't.
    exact = [Figure(v, (v, v), 1, exact=True) for v in (390.5, 390.4, 460.7)]
    assert list(ranking.tie_ranks(exact, False, 0.01)) == [1, 1, 3]


def _metrics(rows: list[tuple]) -> pd.DataFrame:
    """entry, name, value, half-width of the median's interval (None: n < 6), source; the
    columns of effbench.store.base.METRIC_COLUMNS, built as the store answers them."""
    frame = pd.DataFrame(rows, columns=["entry", "name", "value", "half", "source"])
    half = frame["half"].astype(float)
    return frame.assign(median=frame["value"], median_ci95_low=frame["value"] - half,
                        median_ci95_high=frame["value"] + half, mean=frame["value"],
                        ci95_low=frame["value"] - half.fillna(0), ci95_high=frame["value"] + half.fillna(0),
                        n=np.where(half.isna(), 3, 8), unit="", higher_is_better=None, invalid=None)


def test_direction_comes_from_the_catalogue():
    m = _metrics([("a", "latency.e2e_s", 1.0, 0, "timer"), ("b", "latency.e2e_s", 2.0, 0, "timer"),
                  ("a", "throughput.decode_tokens_per_s", 1.0, 0, "timer"),
                  ("b", "throughput.decode_tokens_per_s", 2.0, 0, "timer"),
                  ("a", "compute.pcu", 0.5, 0, "timer"), ("b", "compute.pcu", 0.9, 0, "timer")])
    cells = ranking.rank_cells(m, "finetuning").set_index(["column", "entry"])
    assert cells.loc[("AL", "a"), "rank"] == 1 and cells.loc[("AL", "b"), "rank"] == 2  # lower is better
    assert cells.loc[("PCU", "a"), "metric"] == "compute.pcu" and np.isnan(cells.loc[("PCU", "a"), "rank"])
    assert cells.loc[("PCU", "a"), "why"] == "no direction"
    inference = ranking.rank_cells(m, "inference").set_index(["column", "entry"])
    assert inference.loc[("IT", "b"), "rank"] == 1 and inference.loc[("IT", "a"), "rank"] == 2  # higher is better
    assert inference.loc["MCR", "metric"].isna().all()  # a paper column no run has stays, empty


def test_only_figures_that_can_be_told_apart_are_ranked():
    m = _metrics([
        *((e, "quality.perplexity", v, None, "analytic") for e, v in zip("abcd", (390.5, 390.4, 390.6, 460.7))),
        *((e, "throughput.decode_tokens_per_s", v, None, "timer") for e, v in zip("abcd", (48.6, 31.6, 26.7, 20.0))),
        *((e, "compute.mfu", v, 0.001, "timer") for e, v in zip("abcd", (0.012, 0.006, 0.01, 5.0))),
        *((e, "memory.peak_bytes", 6e8, 1e6, "sampled") for e in "abcd"),
        *((e, "memory.runtime_share", 0.99, None, "sampled") for e in "abcd"),
    ])  # fmt: skip
    m.loc[(m["entry"] == "d") & (m["name"] == "compute.mfu"), "invalid"] = "MFU = 5 is outside [0, 1]"
    cells = ranking.rank_cells(m, "inference").set_index(["column", "entry"])
    # Deterministic perplexities within 1% tie; 460.7 is 18% off.
    assert cells.loc["Performance", "rank"].to_dict() == {"a": 1, "b": 1, "c": 1, "d": 4}
    # Decode tok/s from 3 repeats: no interval, shown unranked.
    assert cells.loc["IT", "rank"].isna().all() and set(cells.loc["IT", "why"]) == {"n<6"}
    # The impossible MFU is shown, flagged, never ranked; the others rank without it.
    assert cells.loc[("MFU", "d"), "why"] == "invalid" and cells.loc[("MFU", "d"), "flags"] == "⚠"
    assert cells.loc["MFU", "rank"].dropna().to_dict() == {"a": 1, "c": 2, "b": 3}
    assert cells.loc[("MFU", "a"), "pool"] == 3
    # A peak that is 99% runtime does not tell techniques apart: marked, not ranked.
    assert set(cells.loc["Peak mem", "why"]) == {"runtime-dominated"} and set(cells.loc["Peak mem", "flags"]) == {"◔"}
    # A group of one: values, no ranks.
    alone = ranking.rank_cells(m[m["entry"] == "a"], "inference")
    assert alone["rank"].isna().all() and "alone" in set(alone["why"])
    assert ranking.composite(alone, {"Performance": 1.0}).empty


def test_a_group_without_figures_keeps_the_paper_columns_empty():
    cells = ranking.rank_cells(_metrics([]), "architecture")
    assert list(cells["column"]) == ["Performance", "AMU", "AL", "TT", "AEC"] and cells["rank"].isna().all()
    assert ranking.composite(cells, {"AMU": 1.0}).empty


def test_serving_groups_rank_by_their_own_rates():
    m = _metrics([("a", "serve.requests_per_s", 4.0, 0, "timer"), ("b", "serve.requests_per_s", 3.0, 0, "timer"),
                  ("a", "serve.goodput_requests_per_s", 1.0, 0, "timer"),
                  ("b", "serve.goodput_requests_per_s", 2.5, 0, "timer"),
                  ("a", "serve.knee_rate", 8.0, 0, "timer"), ("b", "serve.knee_rate", 4.0, 0, "timer")])
    cells = ranking.rank_cells(m, "inference", "serve")
    assert list(dict.fromkeys(cells["column"])) == ["AMU", "AL", "Req/s", "Goodput", "AEC", "Knee"]
    ranked = cells.set_index(["column", "entry"])
    assert ranked.loc[("Req/s", "a"), "rank"] == 1 and ranked.loc[("Goodput", "b"), "rank"] == 1
    assert ranked.loc[("Knee", "a"), "rank"] == 1
    assert "serve.goodput_requests_per_s" in ranking.RANKED_METRICS


def test_al_ranks_the_mean_and_performance_prefers_an_accuracy():
    m = _metrics([("a", "latency.e2e_s", 1.0, None, "timer"), ("b", "latency.e2e_s", 2.0, None, "timer"),
                  ("a", "quality.perplexity", 10.0, 0, "analytic"), ("b", "quality.perplexity", 20.0, 0, "analytic"),
                  ("a", "quality.arc.acc", 0.3, 0, "analytic"), ("b", "quality.arc.acc", 0.6, 0, "analytic")])
    al = m["name"] == "latency.e2e_s"  # medians say a, means say b; 3 repeats: the mean has an interval
    m.loc[al, "mean"], m.loc[al, "ci95_low"], m.loc[al, "ci95_high"] = [3.0, 2.5], [2.9, 2.4], [3.1, 2.6]
    m.loc[m["name"] == "quality.arc.acc", "higher_is_better"] = True  # not in the catalogue: stored direction
    cells = ranking.rank_cells(m, "inference").set_index(["column", "entry"])
    assert cells.loc[("AL", "b"), "rank"] == 1 and cells.loc[("AL", "b"), "value"] == 2.5
    assert cells.loc[("AL", "b"), "low"] == 2.4  # the mean's interval, for the mean shown
    assert cells.loc[("Performance", "a"), "metric"] == "quality.arc.acc"
    assert cells.loc[("Performance", "b"), "rank"] == 1


def test_peer_groups_split_axis_workload_size_and_hardware():
    def cfg(name, **scenario):
        return {"scenario": {"name": name, **scenario}, "data": {"source": "pydoc"}, "backend": {"kind": "hf"}}

    configs = [cfg("inference", batch_size=1, repeats=5), cfg("inference", batch_size=1, repeats=10),
               cfg("inference", batch_size=1), cfg("inference", batch_size=8), cfg("pretrain")]
    runs = pd.DataFrame({
        "axis": ["inference"] * 4 + ["architecture"], "scenario": ["inference"] * 4 + ["pretrain"],
        "workload": [compare.workload_key(c) for c in configs],
        "hardware": ["H100", "H100", "A100", "H100", "H100"], "parameters": [0.49e9, 1.54e9, 0.49e9, 0.49e9, 0.49e9],
    })  # fmt: skip
    grouped = ranking.peer_groups(runs)
    assert grouped["group"].nunique() == 5
    assert grouped["group"][0] == "inference · inference (batch_size=1) · 100M–1B · H100"
    assert grouped["group"][3] == "inference · inference (batch_size=8) · 100M–1B · H100"
    assert grouped["group"][4] == "architecture · pretrain · 100M–1B · H100"  # one workload: no settings shown
    # More repeats measure the same work: same view (one scenario and workload on one hardware).
    assert grouped["view"][0] == grouped["view"][1] == "inference (batch_size=1) · H100"


def test_estimated_figures_rank_apart_and_stay_out_of_the_composite():
    m = _metrics([("a", "energy.avg_power_w", 10.0, 0, "estimated"), ("b", "energy.avg_power_w", 20.0, 0, "estimated"),
                  ("c", "energy.avg_power_w", 30.0, 0, "counter"), ("d", "energy.avg_power_w", 40.0, 0, "counter"),
                  *((e, "memory.amu", v, 0, "sampled") for e, v in zip("abcd", (0.4, 0.3, 0.2, 0.1)))])
    cells = ranking.rank_cells(m, "inference")
    aec = cells[cells["column"] == "AEC"].set_index("entry")
    assert aec["rank"].to_dict() == {"a": 1, "b": 2, "c": 1, "d": 2}  # two pools, each from 1
    assert aec["estimated"].to_dict() == {"a": True, "b": True, "c": False, "d": False}
    weights = {"AEC": 1.0, "AMU": 1.0}
    measured = ranking.composite(cells, weights)
    assert measured["used"].to_dict() == {"a": 1, "b": 1, "c": 2, "d": 2}
    assert ranking.composite(cells, weights, include_estimated=True)["used"].to_dict() == dict.fromkeys("abcd", 2)


def test_composite_is_the_weighted_harmonic_mean_of_min_max_scores():
    m = _metrics([("a", "memory.amu", 0.1, 0, "sampled"), ("b", "memory.amu", 0.2, 0, "sampled"),
                  ("c", "memory.amu", 0.5, 0, "sampled"),
                  ("a", "throughput.decode_tokens_per_s", 100.0, 0, "timer"),
                  ("b", "throughput.decode_tokens_per_s", 300.0, 0, "timer"),
                  ("c", "throughput.decode_tokens_per_s", 200.0, 0, "timer")])
    cells = ranking.rank_cells(m, "inference")
    scores = cells.assign(s=ranking.scores(cells)).dropna(subset=["s"]).set_index(["column", "entry"])["s"]
    # AMU, lower better: a=1, b=(0.5-0.2)/0.4=0.75, c=0. IT, higher better: a=0, b=1, c=0.5.
    assert scores.to_dict() == pytest.approx({("AMU", "a"): 1, ("AMU", "b"): 0.75, ("AMU", "c"): 0,
                                              ("IT", "a"): 0, ("IT", "b"): 1, ("IT", "c"): 0.5})
    comp = ranking.composite(cells, {"AMU": 2.0, "IT": 1.0})

    def lifted(s):
        return ranking.FLOOR + (1 - ranking.FLOOR) * s

    expected = {e: 3 / (2 / lifted(amu) + 1 / lifted(it)) for e, amu, it in (("a", 1, 0), ("b", 0.75, 1),
                                                                                ("c", 0, 0.5))}
    assert comp["score"].to_dict() == pytest.approx(expected)
    assert comp["rank"].to_dict() == {"b": 1, "a": 2, "c": 3}
    # A zero weight leaves a metric out.
    assert ranking.composite(cells, {"AMU": 1.0, "IT": 0.0})["score"]["a"] == pytest.approx(1.0)


def test_pareto_front():
    # x = joules/token (lower better), y = perplexity (lower better)
    x, y = [1, 2, 3, 2, 1], [5, 3, 1, 4, 5]
    assert list(ranking.pareto_front(x, y, False, False)) == [True, True, True, False, True]
    assert not ranking.pareto_front([np.nan], [1], False, False)[0]


# ------------------------------------------------------------------------------ queries


def test_queries_bind_filter_values(backend):
    store = queries.open_store(backend)
    before = queries.count_runs(store)
    assert before == 9
    for f in (Filters(technique=(INJECTION,)), Filters(search=INJECTION), Filters(tag=(INJECTION,)),
              Filters(hardware=(INJECTION,))):
        assert queries.count_runs(store, f) == 0 and queries.run_page(store, f).empty
    assert queries.count_runs(store, Filters(search="%")) == 0  # LIKE wildcards are escaped too
    assert queries.count_runs(store) == before
    assert queries.count_runs(store, Filters(technique=("fp32",), status=("ok",))) == 2  # inference and serve
    assert queries.count_runs(store, Filters(tag=("lbtest",), scenario=("inference",))) == 5
    with pytest.raises(Exception, match="(?i)read-?only"):
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM runs")
    latest = queries.latest_ok_runs(store)
    assert sorted(latest["technique"]) == ["bf16", "bf16", DEFECT, "fp16", "fp32", "fp32", "gqa", "lora"]
    assert set(latest["workload"]) == {compare.workload_key(c) for c in latest["config"]}
    assert queries.facets(store)["tag"] == ["lbtest"]
    page = queries.run_page(store, Filters(), sort="latency.e2e_s", descending=False)
    assert page["error"].notna().sum() == 1 and page["technique"].iloc[-1] in ("gqa", "lora", "fp32")  # no AL: last
    # The figures the pages judge by: the median's interval (none below 6 samples) and the invalid flag.
    rows = queries.metric_rows(store, [lb_id(latest, DEFECT)], ["compute.mfu", "latency.itl_s", "latency.e2e_s"])
    rows = rows.set_index("name")
    assert "outside its domain" in rows.loc["compute.mfu", "invalid"] and rows["invalid"].notna().sum() == 1
    itl = rows.loc["latency.itl_s"]
    assert itl["n"] >= 6 and itl["median_ci95_low"] <= itl["median"] <= itl["median_ci95_high"]
    assert pd.isna(rows.loc["latency.e2e_s", "median_ci95_low"])  # 2 repeats
    store.close()


def lb_id(runs: pd.DataFrame, technique: str) -> str:
    return runs.loc[runs["technique"] == technique, "id"].iloc[0]


def test_overview_renders_from_either_backend(backend, monkeypatch):
    at = app(backend, monkeypatch)
    assert not at.exception and "fp32" in at.get("html")[0].proto.body


# -------------------------------------------------------------------------------- pages


def group_html(at: AppTest) -> str:
    return next(h.proto.body for h in at.get("html") if 'data-testid="group-table"' in h.proto.body)


def cell(html: str, entry: str, metric: str) -> str:
    row = re.search(rf'<tr data-entry="{entry}">(.*?)</tr>', html).group(1)
    return re.search(rf'<td [^>]*data-metric="{re.escape(metric)}">(.*?)</td>', row).group(0)


def test_overview_shows_values_first_and_ranks_only_real_differences(lb, monkeypatch):
    at = app(lb["url"], monkeypatch)
    assert not at.exception
    assert at.radio(key="axis").options == ["architecture", "finetuning", "inference"]
    assert at.radio(key="axis").value == "inference"  # opens on the largest group, not a one-run one
    html = group_html(at)
    rows = re.findall(r'<tr data-entry="(\w+)">', html)
    fp32, bf16, fp16 = (lb["ok"][t] for t in ("fp32", "bf16", "fp16"))
    assert {fp32.id, bf16.id, fp16.id, lb["ok"][DEFECT].id} == set(rows)  # one scenario: no serve run here
    # Values in their units first, no ranks; the figure's interval (or its absence) on hover.
    ppl = fp32.metric("quality.perplexity").value
    assert f"quality.perplexity = {fmt(ppl, '')}; exact (analytic)" in html and "data-rank" not in html
    assert "too few repeats for an interval" in cell(html, fp32.id, "latency.tpot_s")
    # Flags where the numbers are: the injected MFU is invalid, CPU memory runtime-dominated, energy estimated.
    assert "⚠" in cell(html, lb["ok"][DEFECT].id, "compute.mfu") and "not ranked: an invalid figure" in html
    assert "◔" in cell(html, fp32.id, "memory.peak_bytes") and "≈" in cell(html, fp32.id, "energy.avg_power_w")
    assert 'href="docs?doc=metrics&amp;section=memory"' in html  # column names link to the docs
    at.toggle[0].set_value(True).run()  # ranks
    html = group_html(at)
    # Deterministic perplexities within 1% of each other tie; the defect's MFU has no rank.
    ranks = {e: re.search(r'data-rank="(\d+)"', cell(html, e, "quality.perplexity")).group(1) for e in rows}
    assert set(ranks.values()) == {"1"}
    assert "data-rank" not in cell(html, lb["ok"][DEFECT].id, "compute.mfu")
    assert "data-rank" not in cell(html, fp32.id, "memory.peak_bytes")  # runtime-dominated: not ranked
    # A one-run group shows values, no ranks.
    at.radio(key="axis").set_value("architecture").run()
    assert "One pair in this group" in texts(at) and "data-rank" not in group_html(at) and not at.exception


def test_explorer_filters_sorts_and_plots_one_view_at_a_time(lb, monkeypatch):
    at = app(lb["url"], monkeypatch, "views/explorer.py")
    assert not at.exception
    assert "9 runs match" in texts(at)
    views = at.selectbox(key="view").options
    assert len(views) == 4 and all(sum(s in v for s in ("inference", "serve", "pretrain", "finetune")) == 1
                                   for v in views)  # one scenario per view
    assert at.selectbox(key="view").value.startswith("inference · ")
    # Trade-off, bars, roofline of the view, and the load curve (its own choice of serving runs).
    assert len(at.get("plotly_chart")) == 4
    at.selectbox(key="view").set_value(next(v for v in views if v.startswith("serve"))).run()
    assert len(at.get("plotly_chart")) == 3 and not at.exception  # serving runs count no FLOPs: no roofline
    at.multiselect(key="f_technique").set_value(["fp32"]).run()
    assert "3 runs match" in texts(at)  # inference and serve ok, and the failed one
    at.multiselect(key="f_status").set_value(["failed"]).run()
    assert "1 run matches" in texts(at)
    table = at.dataframe[0].value
    assert list(table["id"]) == [lb["failed"].id] and "ValueError" in table["error"].iloc[0]
    at.text_input(key="f_search").set_value(INJECTION).run()
    assert "0 runs match" in texts(at) and not at.exception
    assert queries.count_runs(queries.open_store(lb["url"])) == 9


def test_explorer_reads_filters_from_the_link(lb, monkeypatch):
    at = app(lb["url"], monkeypatch, "views/explorer.py", technique=INJECTION)
    assert "0 runs match" in texts(at) and not at.exception


def test_load_curve_points_follow_the_stored_sweep(lb):
    store = queries.open_store(lb["url"])
    runs = queries.latest_ok_runs(store, Filters(scenario=("serve",)))
    rows = queries.metric_rows(store, list(runs["id"]), plots.LOAD_METRICS, samples=True)
    points = plots.load_points(runs, rows)
    for run in lb["serve"].values():
        mine = points[points["run_id"] == run.id]
        assert list(mine["rate"]) == [2.0, 8.0]  # scenario.rates, rising
        assert list(mine["goodput"]) == run.metric("serve.sweep_goodput_requests_per_s").samples
        assert mine["curve"].iloc[0] == f"{run.technique} · hf (in-process) · {run.model}"
    store.close()


def test_run_detail_shows_everything_stored(lb, monkeypatch):
    run = lb["ok"]["gqa"]
    at = app(lb["url"], monkeypatch, "views/run.py", id=run.id[:8])
    assert not at.exception
    assert f"{run.model} × gqa" in texts(at)
    metrics = at.dataframe[0].value
    assert set(metrics["metric"]) == {m.name for m in run.metrics}
    loss = metrics.set_index("metric").loc["quality.train_loss"]
    assert list(loss["samples"]) == run.metric("quality.train_loss").samples and loss["n"] == len(loss["samples"])
    assert at.json[0].value and '"num_kv_heads": 2' in at.json[0].value  # the resolved config
    assert len(at.get("plotly_chart")) == 1  # its loss curve

    defect = app(lb["url"], monkeypatch, "views/run.py", id=lb["ok"][DEFECT].id)
    mfu = defect.dataframe[0].value.set_index("metric").loc["compute.mfu"]
    assert mfu["flags"] == "⚠" and "outside its domain" in texts(defect)
    failed = app(lb["url"], monkeypatch, "views/run.py", id=lb["failed"].id)
    assert "This run failed" in texts(failed) and "Traceback" in texts(failed)


def test_compare_judges_within_one_workload_only(lb, monkeypatch):
    fp32, bf16, served = lb["ok"]["fp32"], lb["ok"]["bf16"], lb["serve"]["fp32"]
    at = app(lb["url"], monkeypatch, "views/compare.py", runs=[fp32.id, bf16.id[:10], served.id])
    assert not at.exception
    table = at.dataframe[0].value.set_index("metric")
    head = next(c for c in table.columns if c.startswith("vs baseline") and "bf16" in c)
    assert "· inference ·" in head  # labelled with the scenario
    size = table.loc["Size (compression.size_bytes)", head]
    assert size.startswith("✓ −") and "×0.5" in size  # bf16 weights: half the bytes, exact figures
    assert table.loc["FLOPs (compute.flops)", head].startswith("~ +0")  # same counted FLOPs: a tie
    assert table.loc["Perplexity (quality.perplexity)", head].startswith("~")  # within 1%
    serve = next(c for c in table.columns if c.startswith("vs baseline") and "· serve ·" in c)
    assert set(table[serve]) <= {"≁", "–"}  # another scenario: shown, never judged
    assert any("scenario inference ≠ serve" in w.value for w in at.warning)
    config = at.dataframe[1].value
    assert set(config.index) >= {"technique.name", "technique.dtype"}


def test_empty_store_teaches_the_first_sweep(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/empty.db"
    open_store(url).migrate()  # tables, no runs
    for page in (None, "views/explorer.py", "views/run.py", "views/compare.py"):
        at = app(url, monkeypatch, page)
        assert not at.exception
        assert "holds no runs yet" in texts(at) and "make demo" in texts(at)


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 100, None])
def test_missing_or_corrupt_store_gives_a_clear_page(tmp_path, monkeypatch, content):
    path = tmp_path / "store.db"
    if content is not None:
        path.write_bytes(content)
    at = app(f"sqlite:///{path}", monkeypatch)
    assert not at.exception
    assert "cannot be opened" in texts(at)
    reason = {None: "no results store at", b"": "no `runs` table"}.get(content, "file is not a database")
    assert reason in texts(at)

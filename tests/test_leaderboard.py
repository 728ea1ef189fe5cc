"""Leaderboard: the ranking rules on hand-made figures, the read-only queries, and every
page (Streamlit AppTest) on a store of real tiny runs, an empty store and a corrupt file."""

from __future__ import annotations

import math
import os
import re
import uuid

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from effbench.execute import execute
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.record import Status
from effbench.report import fmt
from effbench.store import open_store
from leaderboard import queries, ranking
from leaderboard.queries import Filters

APP = str(ranking.__file__).replace("ranking.py", "app.py")
PG_URL = os.environ.get("EFFBENCH_TEST_PG_URL")
INJECTION = "x' OR '1'='1"
INFERENCE = ["scenario.prompt_tokens=32", "scenario.output_tokens=8", "scenario.repeats=2", "scenario.warmup=1",
             "scenario.eval_max_tokens=1024", "scenario.eval_context=128", "model.hidden_size=64",
             "model.num_layers=2", "model.intermediate_size=172", "hardware.device=cpu"]
PRETRAIN = ["scenario=pretrain", "model=tiny", "model.hidden_size=64", "model.num_layers=2",
            "model.intermediate_size=172", "hardware.device=cpu", "scenario.token_budget=2048", "scenario.seq_len=32",
            "scenario.micro_batch_size=4", "scenario.eval_every=5", "scenario.warmup_steps=2",
            "scenario.eval_tokens=512", "technique=gqa", "technique.options.num_kv_heads=2"]
# One crash: a prompt longer than the held-out text (as in test_cli).
FAILING = ["scenario.prompt_tokens=10000000", *INFERENCE[1:], "technique=fp32"]

_built: dict[str, dict] = {}


def tiny_store(tmp_path_factory) -> dict:
    """Built once per session (the browser test shares it): three tiny inference runs
    (fp32, bf16, fp16), one tiny pretraining run (gqa) and one failed run."""
    if not _built:
        root = tmp_path_factory.mktemp("leaderboard")
        url = f"sqlite:///{root}/store.db"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EFFBENCH_ARTIFACTS", str(root / "artifacts"))
            for overrides in ([*INFERENCE, "technique=fp32"], [*INFERENCE, "technique=bf16"],
                              [*INFERENCE, "technique=fp16"], PRETRAIN, FAILING):
                with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
                    cfg = compose("config", overrides=[*overrides, f"store.url={url}", "tags=[lbtest]"])
                execute(cfg)
        runs = open_store(url, read_only=True).runs()
        _built.update(url=url, path=root / "store.db", runs=runs,
                      ok={r.technique: r for r in runs if r.status is Status.OK},
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
    assert ranking.size_bucket(3.09e9) == ranking.size_bucket(3.8e9) == "2B–5B"  # 3B, SPEC's 3.8B
    assert ranking.size_bucket(1e9) == "1B–2B"  # upper bounds are exclusive
    assert ranking.size_bucket(None) == ranking.size_bucket(math.nan) == ranking.UNKNOWN_SIZE


def test_ties_share_the_rank_of_their_groups_best_entry():
    # Lower is better. b overlaps a; c overlaps b but not a: c starts a new tie group at
    # its position (3), it does not chain onto a through b. d is far off.
    values, lows, highs = [1.0, 1.4, 1.7, 10.0], [0.5, 1.2, 1.55, 9.0], [1.5, 1.6, 1.8, 11.0]
    assert list(ranking.interval_ranks(values, lows, highs, False)) == [1, 1, 3, 4]
    # Higher is better: from the top, d leads alone; c leads; b overlaps c; a overlaps b, not c.
    assert list(ranking.interval_ranks(values, lows, highs, True)) == [4, 2, 2, 1]
    # Equal figures without intervals tie; distinct ones don't.
    assert list(ranking.interval_ranks([2, 2, 3], [2, 2, 3], [2, 2, 3], True)) == [2, 2, 1]


def _metrics(rows: list[tuple]) -> pd.DataFrame:
    """entry, name, value, half-width of the interval, source."""
    frame = pd.DataFrame(rows, columns=["entry", "name", "value", "half", "source"])
    return frame.assign(mean=frame["value"], ci95_low=frame["value"] - frame["half"],
                        ci95_high=frame["value"] + frame["half"], unit="", higher_is_better=None)


def test_direction_comes_from_the_catalogue():
    m = _metrics([("a", "latency.e2e_s", 1.0, 0, "timer"), ("b", "latency.e2e_s", 2.0, 0, "timer"),
                  ("a", "throughput.decode_tokens_per_s", 1.0, 0, "timer"),
                  ("b", "throughput.decode_tokens_per_s", 2.0, 0, "timer"),
                  ("a", "compute.pcu", 0.5, 0, "timer"), ("b", "compute.pcu", 0.9, 0, "timer")])
    cells = ranking.rank_cells(m, "finetuning").set_index(["column", "entry"])
    assert cells.loc[("AL", "a"), "rank"] == 1 and cells.loc[("AL", "b"), "rank"] == 2  # lower is better
    assert cells.loc[("PCU", "a"), "metric"] == "compute.pcu" and np.isnan(cells.loc[("PCU", "a"), "rank"])
    inference = ranking.rank_cells(m, "inference").set_index(["column", "entry"])
    assert inference.loc[("IT", "b"), "rank"] == 1 and inference.loc[("IT", "a"), "rank"] == 2  # higher is better
    assert inference.loc["MCR", "metric"].isna().all()  # a paper column no run has stays, empty


def test_a_group_without_figures_keeps_the_paper_columns_empty():
    cells = ranking.rank_cells(_metrics([]), "architecture")
    assert list(cells["column"]) == ["Performance", "AMU", "AL", "TT", "AEC"] and cells["rank"].isna().all()
    assert ranking.composite(cells, {"AMU": 1.0}).empty


def test_serving_groups_rank_by_their_own_rates():
    m = _metrics([("a", "serve.requests_per_s", 4.0, 0, "timer"), ("b", "serve.requests_per_s", 3.0, 0, "timer"),
                  ("a", "serve.goodput_requests_per_s", 1.0, 0, "timer"),
                  ("b", "serve.goodput_requests_per_s", 2.5, 0, "timer")])
    cells = ranking.rank_cells(m, "inference", "serve")
    assert list(dict.fromkeys(cells["column"])) == ["AMU", "AL", "Req/s", "Goodput", "AEC"]  # no Performance, MCR
    ranked = cells.set_index(["column", "entry"])
    assert ranked.loc[("Req/s", "a"), "rank"] == 1 and ranked.loc[("Goodput", "b"), "rank"] == 1
    assert "serve.goodput_requests_per_s" in ranking.RANKED_METRICS


def test_al_ranks_the_mean_and_performance_prefers_an_accuracy():
    m = _metrics([("a", "latency.e2e_s", 1.0, 0, "timer"), ("b", "latency.e2e_s", 2.0, 0, "timer"),
                  ("a", "quality.perplexity", 10.0, 0, "analytic"), ("b", "quality.perplexity", 20.0, 0, "analytic"),
                  ("a", "quality.arc.acc", 0.3, 0, "analytic"), ("b", "quality.arc.acc", 0.6, 0, "analytic")])
    m.loc[m["name"] == "latency.e2e_s", "mean"] = [3.0, 2.5]  # medians say a, means say b
    m.loc[m["name"] == "quality.arc.acc", "higher_is_better"] = True  # not in the catalogue: stored direction
    cells = ranking.rank_cells(m, "inference").set_index(["column", "entry"])
    assert cells.loc[("AL", "b"), "rank"] == 1
    assert cells.loc[("Performance", "a"), "metric"] == "quality.arc.acc"
    assert cells.loc[("Performance", "b"), "rank"] == 1


def test_peer_groups_split_axis_workload_size_and_hardware():
    runs = pd.DataFrame({
        "axis": ["inference"] * 4 + ["architecture"],
        "scenario": ["inference"] * 4 + ["pretrain"],
        "workload": ['{"scenario": {"name": "inference", "batch_size": 1}}'] * 3
                    + ['{"scenario": {"name": "inference", "batch_size": 8}}', '{"scenario": {"name": "pretrain"}}'],
        "hardware": ["H100", "H100", "A100", "H100", "H100"],
        "parameters": [0.49e9, 1.54e9, 0.49e9, 0.49e9, 0.49e9],
    })  # fmt: skip
    groups = ranking.peer_groups(runs)["group"].tolist()
    assert len(set(groups)) == 5
    assert groups[0] == "inference · inference (batch_size=1) · 100M–1B · H100"
    assert groups[3] == "inference · inference (batch_size=8) · 100M–1B · H100"
    assert groups[4] == "architecture · pretrain · 100M–1B · H100"  # one workload: no settings shown


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


def test_pareto_front_and_noise_aware_verdicts():
    # x = joules/token (lower better), y = perplexity (lower better)
    x, y = [1, 2, 3, 2, 1], [5, 3, 1, 4, 5]
    assert list(ranking.pareto_front(x, y, False, False)) == [True, True, True, False, True]
    assert not ranking.pareto_front([np.nan], [1], False, False)[0]
    assert ranking.verdict((1.0, 0.9, 1.1), (1.05, 0.95, 1.15), False) == "within noise"
    assert ranking.verdict((1.0, 0.9, 1.1), (2.0, 1.9, 2.1), False) == "worse"
    assert ranking.verdict((1.0, 0.9, 1.1), (2.0, 1.9, 2.1), True) == "better"
    assert ranking.verdict((1.0, 1.0, 1.0), (2.0, 2.0, 2.0), None) == "differs"
    assert ranking.verdict((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None) == "same"


# ------------------------------------------------------------------------------ queries


def test_queries_bind_filter_values(backend):
    store = queries.open_store(backend)
    before = queries.count_runs(store)
    assert before == 5
    for f in (Filters(technique=(INJECTION,)), Filters(search=INJECTION), Filters(tag=(INJECTION,)),
              Filters(hardware=(INJECTION,))):
        assert queries.count_runs(store, f) == 0 and queries.run_page(store, f).empty
    assert queries.count_runs(store, Filters(search="%")) == 0  # LIKE wildcards are escaped too
    assert queries.count_runs(store) == before
    assert queries.count_runs(store, Filters(technique=("fp32",), status=("ok",))) == 1
    assert queries.count_runs(store, Filters(tag=("lbtest",), axis=("inference",))) == 4
    with pytest.raises(Exception, match="(?i)read-?only"):
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM runs")
    latest = queries.latest_ok_runs(store)
    assert sorted(latest["technique"]) == ["bf16", "fp16", "fp32", "gqa"]  # the failed fp32 is not ranked
    assert queries.facets(store)["tag"] == ["lbtest"]
    page = queries.run_page(store, Filters(), sort="latency.e2e_s", descending=False)
    assert page["error"].notna().sum() == 1 and page["technique"].iloc[-1] in ("gqa", "fp32")  # no AL: last
    store.close()


def test_overview_renders_from_either_backend(backend, monkeypatch):
    at = app(backend, monkeypatch)
    assert not at.exception and "gqa" in at.get("html")[0].proto.body


# -------------------------------------------------------------------------------- pages


def test_overview_ranks_the_tiny_runs(lb, monkeypatch):
    at = app(lb["url"], monkeypatch)
    assert not at.exception
    assert at.radio(key="axis").options == ["architecture", "inference"]
    at.radio(key="axis").set_value("inference").run()
    html = at.get("html")[0].proto.body
    rows = re.findall(r'<tr data-entry="(\w+)">', html)
    assert {lb["ok"][t].id for t in ("fp32", "bf16", "fp16")} == set(rows)
    # Each cell shows its rank; the figure behind it, as the store has it, is on hover.
    fp32 = lb["ok"]["fp32"]
    ppl = fmt(fp32.metric("quality.perplexity").value, "")
    assert f"quality.perplexity = {ppl}" in html
    assert "≈" in html and "estimated figures" in html  # CPU energy is estimated: marked
    assert "Left out of the composite, estimated on every run here: AEC" in texts(at)
    at.toggle[0].set_value(True).run()  # values in the cells
    assert f"<small>{ppl}</small>" in at.get("html")[0].proto.body
    at.radio(key="axis").set_value("architecture").run()
    assert "gqa" in at.get("html")[0].proto.body and not at.exception


def test_explorer_filters_sorts_and_plots(lb, monkeypatch):
    at = app(lb["url"], monkeypatch, "views/explorer.py")
    assert not at.exception
    assert "5 runs match" in texts(at)
    assert len(at.get("plotly_chart")) == 3  # scatter + Pareto, bars, loss curves
    at.multiselect(key="f_technique").set_value(["fp32"]).run()
    assert "2 runs match" in texts(at)  # the ok and the failed fp32
    at.multiselect(key="f_status").set_value(["failed"]).run()
    assert "1 run matches" in texts(at)
    table = at.dataframe[0].value
    assert list(table["id"]) == [lb["failed"].id] and "ValueError" in table["error"].iloc[0]
    at.text_input(key="f_search").set_value(INJECTION).run()
    assert "0 runs match" in texts(at) and not at.exception
    assert queries.count_runs(queries.open_store(lb["url"])) == 5


def test_explorer_reads_filters_from_the_link(lb, monkeypatch):
    at = app(lb["url"], monkeypatch, "views/explorer.py", technique=INJECTION)
    assert "0 runs match" in texts(at) and not at.exception


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

    failed = app(lb["url"], monkeypatch, "views/run.py", id=lb["failed"].id)
    assert "This run failed" in texts(failed) and "Traceback" in texts(failed)


def test_compare_marks_noise_and_config_differences(lb, monkeypatch):
    fp32, bf16 = lb["ok"]["fp32"], lb["ok"]["bf16"]
    at = app(lb["url"], monkeypatch, "views/compare.py", runs=[fp32.id, bf16.id[:10]])
    assert not at.exception
    table = at.dataframe[0].value.set_index("metric")
    column = next(c for c in table.columns if c.startswith("vs baseline"))
    size = table.loc["Size (compression.size_bytes)", column]
    assert size.startswith("✓ −") and "×0.5" in size  # bf16 weights: half the bytes, exact figures
    assert table.loc["FLOPs (compute.flops)", column].startswith("= +0")  # same counted FLOPs
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

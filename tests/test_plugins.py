"""Everything that plugs in goes through one registry; bad input of any kind
exits 2 before anything loads or is stored; the CLI stays light; an installed
wheel finds its configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from factories import make_record
from hydra import compose, initialize_config_dir

from effbench.backends import BACKENDS
from effbench.errors import ConfigError
from effbench.execute import prepare
from effbench.hydra_app import CONFIG_DIR
from effbench.registry import Registry, UnknownName
from effbench.store import STORES, StoreError, StoreMissing, StoreVersionError, open_store
from effbench.techniques import TECHNIQUES
from runners import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "torchao", "hqq", "optimum", "lm_eval", "codecarbon",
         "pandas", "scipy")


def effbench(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "effbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def compose_cfg(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["hardware.device=cpu", *overrides])


# --- registries ---------------------------------------------------------------------------------------------------


def test_registry_is_lazy_and_names_the_nearest_choices():
    reg: Registry[object] = Registry("widget")
    reg.register("json-ish", "json:dumps", note="lazy")
    reg.register("plain", len)
    assert reg.get("plain") is len
    assert reg.get("json-ish") is json.dumps  # imported on first use
    assert reg.entry("json-ish").meta == {"note": "lazy"}
    with pytest.raises(UnknownName, match=r"unknown widget 'plian' \(did you mean plain\?\); choose one of"):
        reg.get("plian")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("plain", len)


def test_every_plug_in_kind_is_reached_through_its_registry():
    assert set(SCENARIOS.names()) == {"inference", "serve", "pretrain", "finetune"}
    assert {"precision", "bnb-4bit", "lora", "architecture"} <= set(TECHNIQUES.names())
    assert "hf" in BACKENDS.names()
    assert set(STORES.names()) == {"sqlite", "postgresql", "json"}
    for entry in SCENARIOS:
        spec = entry.target
        assert spec.name == entry.name and callable(spec.validate) and callable(spec.run)


# One bad key per scenario, checked by the scenario's own validate: exit 2 naming it, nothing stored.
BAD_KEYS = {
    "inference": ("scenario.output_tokens=1", "scenario.output_tokens"),
    "serve": ("scenario.rate=0", "scenario.rate"),
    "pretrain": ("scenario.precision=fp8", "scenario.precision"),
    "finetune": ("scenario.eval_every=0", "scenario.eval_every"),
}


@pytest.mark.parametrize("scenario", sorted(BAD_KEYS))
def test_each_scenario_validates_its_own_keys(scenario):
    override, key = BAD_KEYS[scenario]
    technique = {"finetune": "lora", "pretrain": "mha"}.get(scenario, "fp32")
    with pytest.raises(ConfigError, match=key):
        prepare(compose_cfg(f"scenario={scenario}", f"technique={technique}", override))
    assert BAD_KEYS.keys() == set(SCENARIOS.names())  # a new scenario gets a case here


def test_a_technique_of_another_axis_is_a_config_error():
    with pytest.raises(ConfigError, match="scenario=finetune measures the finetuning axis.*lora"):
        prepare(compose_cfg("scenario=finetune", "technique=bnb-nf4"))


# --- bad input exits 2 and stores nothing -------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "expected"), [
    (["sweep=nosuch"], ["sweep", "quick"]),
    (["store.url=foo://bar"], ["unknown scheme 'foo'", "sqlite:///"]),
    (["model=hf", "model.id=/nonexistent/model"], ["model.id=/nonexistent/model", "no such directory"]),
    (["data=local", "data.path=/missing.txt"], ["data.path=/missing.txt", "no such file"]),
    (["model=artifact", "model.run_id=abc123"], ["model.run_id=abc123"]),
    (["scenario=finetune", "technique=lora", "technique.target_modules=[nope]"], ["nope", "q_proj"]),
])
def test_bad_input_exits_2_before_anything_is_created(tmp_path, overrides, expected):
    out = effbench("run", *overrides, cwd=tmp_path, env={"EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/s.db"})
    assert out.returncode == 2, out.stdout + out.stderr
    for text in expected:
        assert text in out.stderr
    assert not (tmp_path / "s.db").exists()
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.db"))


def test_a_sweep_with_one_bad_job_starts_no_job(tmp_path):
    """Every job is validated before the first starts, whatever the launcher (here: one fresh
    process per job, which would otherwise pay its start-up before failing)."""
    out = effbench("run", "--multirun", "hydra/launcher=isolated", "scenario.output_tokens=8,1",
                   "technique=fp32,bf16", cwd=tmp_path, env={"EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/s.db"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "4 jobs in the sweep; 2 cannot run, so none was started" in out.stderr
    assert "scenario.output_tokens=1" in out.stderr and "must be ≥ 2" in out.stderr
    assert not (tmp_path / "s.db").exists()
    assert not list(tmp_path.rglob(".submitit"))  # no job process was launched


def test_store_commands_on_missing_corrupt_and_foreign_stores(tmp_path):
    env = {"EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/none.db"}
    out = effbench("list", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "no results store at" in out.stderr and "effbench run" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "none.db").exists()
    (tmp_path / "corrupt.db").write_bytes(b"not a database at all" * 100)
    out = effbench("list", "--db", f"sqlite:///{tmp_path}/corrupt.db", cwd=tmp_path)
    assert out.returncode == 2 and "cannot be read as an effbench results store" in out.stderr
    import sqlite3

    sqlite3.connect(tmp_path / "foreign.db").execute("CREATE TABLE t (x)").connection.commit()
    out = effbench("show", "abc", "--db", f"sqlite:///{tmp_path}/foreign.db", cwd=tmp_path)
    assert out.returncode == 2 and "is not an effbench results store" in out.stderr
    out = effbench("import", "missing.json", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "missing.json: no such file" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[{}]")
    out = effbench("import", str(bad), cwd=tmp_path, env=env)
    assert out.returncode == 2 and "nothing was imported" in out.stderr
    assert not (tmp_path / "none.db").exists()  # a refused import creates no database


def test_json_dir_import_skip_invalid_and_shared_file_modes(tmp_path):
    records = tmp_path / "records"
    store = open_store(f"json://{records}")
    good = [make_record(config_hash=f"{i:064x}") for i in range(2)]
    for r in good:
        store.write(r)
    for p in records.glob("*.json"):
        assert p.stat().st_mode & 0o044 == 0o044 & ~_umask()  # group/other may read, as the umask allows
    (records / f"{'f' * 16}-broken.json").write_text("[{\"id\": 1}]")
    db = {"EFFBENCH_DB_URL": f"sqlite:///{tmp_path}/s.db"}
    refused = effbench("import", str(records), cwd=tmp_path, env=db)
    assert refused.returncode == 2 and "broken.json" in refused.stderr
    out = effbench("import", str(records), "--skip-invalid", cwd=tmp_path, env=db)
    assert out.returncode == 0, out.stderr
    assert "imported 2 runs" in out.stdout and "1 files skipped" in out.stdout
    assert "skipped ffffffffffffffff-broken.json: field 'created_at' is missing" in out.stderr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the store's schema version ------------------------------------------------------------------------------------


def test_schema_version_is_the_newest_migration():
    from effbench.store.migrations import script
    from effbench.store.schema import SCHEMA_VERSION

    assert script().get_current_head() == SCHEMA_VERSION


def test_migrations_build_exactly_the_orm_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from effbench.store.schema import Base

    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.migrate()
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def _unversioned_store(path: Path, record) -> None:
    """A store as effbench wrote it before versioning: migration 0001's tables, no version table."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations
    from sqlalchemy import create_engine, text

    from effbench.store.migrations import _config  # noqa: F401  (the scripts' location)

    engine = create_engine(f"sqlite:///{path}")
    spec_path = Path(__file__).resolve().parent.parent / "effbench/store/migrations/versions/0001_initial.py"
    namespace: dict = {}
    with engine.begin() as conn:
        ctx = MigrationContext.configure(conn)
        with Operations.context(ctx):
            exec(compile(spec_path.read_text(), str(spec_path), "exec"), namespace)  # noqa: S102
            namespace["upgrade"]()
        d = record.to_dict()
        conn.execute(text("INSERT INTO runs (id, created_at, status, axis, scenario, model, technique, config, "
                          "config_hash, hardware, software, seed, tags) VALUES (:id, :c, 'ok', 'inference', "
                          "'inference', 'm', 't', '{}', 'h', '{}', '{}', 0, '[]')"), {"id": d["id"], "c": d["created_at"]})
        # An impossible figure written before figures were checked, with 6 samples (enough for the median's interval).
        conn.execute(text("INSERT INTO metrics (run_id, name, value, unit, source, note, samples, n, median, mean, p90, "
                          "p99, std, ci95_low, ci95_high) VALUES (:id, 'compute.mfu', 5, 'fraction', 'timer', '', "
                          "'[5, 4, 6, 5, 5, 5]', 6, 5, 5, 5, 5, 0.6, 4.4, 5.6)"), {"id": d["id"]})
    engine.dispose()


def test_an_older_store_is_upgraded_for_writing_and_refused_read_only(tmp_path):
    from effbench.store.schema import SCHEMA_VERSION
    path = tmp_path / "old.db"
    old = make_record()
    _unversioned_store(path, old)
    url = f"sqlite:///{path}"
    with pytest.raises(StoreVersionError, match=r"older effbench.*effbench migrate --db sqlite:///"):
        open_store(url, read_only=True)
    store = open_store(url)
    assert store.schema_revision() == "0001"
    assert store.get(old.id).warnings == [] and store.get(old.id).provenance == {}  # upgraded, defaults filled
    assert store.schema_revision() == SCHEMA_VERSION
    from sqlalchemy import text

    with store.engine.connect() as conn:  # the data migration filled the new columns from the stored samples
        row = conn.execute(text("SELECT median_ci95_low, median_ci95_high, few_samples, invalid FROM metrics")).one()
    assert tuple(row[:3]) == (4.0, 6.0, 0) and "compute.mfu" in row[3] and "outside its domain" in row[3]
    store.write(make_record())
    assert len(open_store(url, read_only=True).runs()) == 2


def test_a_newer_store_is_refused(tmp_path):
    from sqlalchemy import text

    store = open_store(f"sqlite:///{tmp_path}/s.db")
    store.write(make_record())
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    for read_only in (True, False):
        with pytest.raises(StoreVersionError, match="newer effbench"):
            s = open_store(store.url, read_only=read_only)
            s.runs()


def test_unknown_and_unusable_store_urls():
    with pytest.raises(StoreError, match="no scheme"):
        open_store("results.db")
    with pytest.raises(StoreMissing):
        open_store("json:///nonexistent/effbench-records", read_only=True)


# --- the leaderboard reads every store through the interface ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "json"])
def test_leaderboard_queries_agree_on_every_store(tmp_path, kind):
    import pandas as pd

    from effbench.metrics.catalog import make_metric as catalog_metric
    from effbench.metrics.record import Source
    from effbench.store import Filters

    url = {"sqlite": f"sqlite:///{tmp_path}/s.db", "json": f"json://{tmp_path}/records",
           "postgres": os.environ.get("EFFBENCH_TEST_PG_URL")}[kind]
    if url is None:
        pytest.skip("EFFBENCH_TEST_PG_URL is not set")
    store = open_store(url)
    if kind == "postgres":
        store.migrate()
        from sqlalchemy import text

        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM runs"))
    judged = make_record(technique="e", tags=[], hardware={"label": "cpu"})
    judged.metrics += [catalog_metric("latency.e2e_s", 4.5, Source.TIMER, samples=[1, 2, 3, 4, 5, 6, 7, 8]),
                       catalog_metric("compute.mfu", 5.0, Source.TIMER)]
    runs = [make_record(technique=t, tags=[t], hardware={"label": "cpu"}) for t in ("a", "b", "c")]
    runs.append(make_record(status="failed", metrics=[], technique="d", tags=[], hardware={"label": "cpu"}))
    for r in [judged, *runs]:
        store.write(r)
    q = open_store(url, read_only=True).query
    assert q.version() == (5, runs[-1].created_at)
    assert q.count_runs(Filters()) == 5 and q.count_runs(Filters(status=("ok",))) == 4
    assert q.count_runs(Filters(tag=("b",))) == 1
    facets = q.facets()
    assert facets["technique"] == ["a", "b", "c", "d", "e"] and facets["tag"] == ["a", "b", "c"]
    page = q.run_page(Filters(), "tokens_per_s", True, 0, 10)
    assert list(page["id"])[-1] == runs[-1].id  # no metric: sorted last
    rows = q.metric_rows([runs[0].id], (), "tokens%", False)
    assert list(rows["name"]) == ["tokens_per_s"] and rows["n"].iloc[0] == 3
    # What the pages judge figures by: the median's interval (none below 6 samples), the mean's, invalid.
    figures = q.metric_rows([judged.id], ("latency.e2e_s", "compute.mfu"), None, False).set_index("name")
    e2e = figures.loc["latency.e2e_s"]
    assert (e2e["median"], e2e["median_ci95_low"], e2e["median_ci95_high"]) == (4.5, 1.0, 8.0)  # order statistics
    assert e2e["ci95_low"] < 4.5 < e2e["ci95_high"] and e2e["n"] == 8 and pd.isna(e2e["invalid"])
    assert "outside its domain" in figures.loc["compute.mfu", "invalid"]
    assert pd.isna(figures.loc["compute.mfu", "median_ci95_low"])  # one sample
    latest = q.latest_ok_runs(Filters())
    assert sorted(latest["technique"]) == ["a", "b", "c", "e"] and "config" in latest


# --- light imports and packaging -----------------------------------------------------------------------------------


def test_cli_and_execute_import_no_heavy_backend():
    code = ("import sys, effbench.cli, effbench.execute, effbench.store, effbench.gate.cli; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_package_on_disk_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"effbench.configs", "hydra_plugins"}
    for top in ("effbench", "runners", "leaderboard", "hydra_plugins"):
        for d in [ROOT / top, *(ROOT / top).rglob("*")]:
            if d.is_dir() and "__pycache__" not in d.parts and "versions" not in d.parts and any(d.glob("*.py")):
                on_disk.add(".".join(d.relative_to(ROOT).parts))
    assert listed == on_disk


@pytest.mark.slow
def test_an_installed_wheel_runs_a_pair_with_its_own_configs(tmp_path):
    wheel_dir, target, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(wheel_dir)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    *map(str, wheel_dir.glob("*.whl"))], check=True, capture_output=True)
    # The wheel's packages shadow the editable checkout (PYTHONPATH comes first); run outside the checkout.
    env = {"PYTHONPATH": str(target), "EFFBENCH_DB_URL": f"sqlite:///{work}/s.db"}
    where = subprocess.run([sys.executable, "-c", "import effbench.hydra_app as h; print(h.__file__, h.CONFIG_DIR)"],
                           cwd=work, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    module_file, config_dir = where.stdout.split()
    assert module_file.startswith(str(target)) and config_dir.startswith(str(target))
    out = effbench("run", "scenario.prompt_tokens=16", "scenario.output_tokens=4", "scenario.repeats=1",
                   "model.hidden_size=64", "model.intermediate_size=172", "model.num_layers=1",
                   "scenario.eval_max_tokens=512", "scenario.eval_context=64", cwd=work, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [run] = open_store(env["EFFBENCH_DB_URL"]).runs()
    assert run.status.value == "ok" and run.metric("latency.tpot_s").value > 0

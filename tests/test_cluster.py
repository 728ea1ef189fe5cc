"""Cluster sweeps: submitit's local launcher writing concurrently into SQLite,
PostgreSQL (when EFFBENCH_TEST_PG_URL is set) and a JSON-record directory; a
job killed mid-run; idempotent import; one GPU per job (logic tested without a GPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from factories import make_record
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from effbench.device_pinning import (
    ENV_ALLOW_SHARED,
    ENV_JOBS_PER_DEVICE,
    ENV_PINNED_GPU,
    SharedDeviceError,
    device_sharing_problem,
    gpus_from_env,
    plan_slots,
)
from effbench.metrics.record import Status
from effbench.store import RecordError, open_store
from effbench.store.jsondir import JsonDirStore
from effbench.store.records_io import read_records

PG_URL = os.environ.get("EFFBENCH_TEST_PG_URL")
# tests/test_cli.py's FAST, minus repeats (swept here), one thread per job.
FAST = ["scenario.prompt_tokens=32", "scenario.output_tokens=8", "scenario.warmup=1", "scenario.eval_max_tokens=2048",
        "scenario.eval_context=128", "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=172",
        "hardware.device=cpu", "hardware.threads=1"]
# Four pairs: the same model and technique at 2..5 repeats (distinct config hashes).
SWEEP = ["--multirun", "hydra/launcher=local", "scenario.repeats=2,3,4,5", *FAST]


def effbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "effbench.cli", *args]


def run_effbench(*args: str, cwd: Path, db: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(effbench_cmd(*args), cwd=cwd, env={**os.environ, "EFFBENCH_DB_URL": db},
                         capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def assert_whole_sweep(runs, repeats=(2, 3, 4, 5)) -> None:
    """Every pair once, ok, with every metric and its samples."""
    assert sorted(r.config["scenario"]["repeats"] for r in runs) == sorted(repeats)  # nothing lost, nothing twice
    assert len({r.id for r in runs}) == len({r.config_hash for r in runs}) == len(runs)
    assert len({r.sweep_id for r in runs}) == 1
    names = {frozenset(m.name for m in r.metrics) for r in runs}
    assert len(names) == 1 and len(next(iter(names))) > 20
    for r in runs:
        assert r.status is Status.OK, r.error
        assert r.metric("latency.tpot_s").summary.n == r.config["scenario"]["repeats"]


# --- the JSON-record directory ------------------------------------------------------------------------------------


def test_json_dir_store_round_trip_resume_and_atomic_files(tmp_path):
    url = f"json://{tmp_path}/records"
    store = open_store(url)  # the json:// scheme opens a JsonDirStore
    assert isinstance(store, JsonDirStore)
    a, b = make_record(config_hash="aaaa" * 16), make_record(config_hash="bbbb" * 16, status="failed", metrics=[])
    store.write(a)
    store.write(b)
    assert store.get(a.id).to_dict() == a.to_dict() and store.get(a.id[:10]).id == a.id
    assert [r.id for r in store.runs()] == [b.id, a.id]  # newest first
    assert [r.id for r in store.runs(status="failed")] == [b.id]
    # Resume: only an ok run of the same config hash counts as done.
    assert store.find_completed("aaaa" * 16) == a.id
    assert store.find_completed("bbbb" * 16) is None
    with pytest.raises(RecordError, match="already stored"):
        store.write(a)
    # A write in progress (or killed mid-write) is a hidden temporary file: never read as a record.
    (tmp_path / "records" / f".{uuid.uuid4().hex}.tmp.partial").write_text('[{"id": "half')
    assert len(read_records(tmp_path / "records").records) == 2
    files = sorted(p.name for p in (tmp_path / "records").glob("*.json"))
    assert files == sorted([f"{'aaaa' * 4}-{a.id}.json", f"{'bbbb' * 4}-{b.id}.json"])
    # Each file is itself an importable export (a list of one record).
    assert json.loads((tmp_path / "records" / files[0]).read_text())[0]["id"] in (a.id, b.id)
    with pytest.raises(PermissionError):
        open_store(url, read_only=True).write(make_record())


def test_json_import_is_idempotent_and_rejects_malformed_records_naming_the_field(tmp_path):
    records = tmp_path / "records"
    jd = JsonDirStore(f"json://{records}")
    written = [make_record(config_hash=f"{i:064x}") for i in range(3)]
    for r in written:
        jd.write(r)
    db = open_store(f"sqlite:///{tmp_path}/store.db")
    assert db.import_records(read_records(records).records) == (3, 0)
    assert db.import_records(read_records(records).records) == (0, 3)  # re-import adds nothing
    assert sorted(r.id for r in db.runs()) == sorted(r.id for r in written)
    assert db.get(written[0].id).to_dict() == written[0].to_dict()

    # One bad record: nothing of the directory is imported, and the message names file and field.
    bad = make_record().to_dict()
    bad["metrics"][1]["value"] = "fast"
    (records / f"{'f' * 16}-{bad['id']}.json").write_text(json.dumps([bad]))
    extra = make_record()
    jd.write(extra)
    before = len(db.runs())
    with pytest.raises(RecordError, match=r"field 'metrics\[1\]\.value' must be a number") as e:
        db.import_records(read_records(records).records)
    assert bad["id"] in str(e.value)  # the file's name
    assert len(db.runs()) == before  # nothing written
    out = run_effbench("import", str(records), cwd=tmp_path, db=f"sqlite:///{tmp_path}/store.db", check=False)
    assert out.returncode == 2 and "metrics[1].value" in out.stderr and "nothing was imported" in out.stderr


# --- real sweeps: submitit's local launcher, 4 jobs at once -------------------------------------------------------


@pytest.mark.slow
def test_four_job_local_sweep_into_sqlite_loses_and_duplicates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/store.db"
    out = run_effbench("run", *SWEEP, cwd=tmp_path, db=url)
    assert_whole_sweep(open_store(url).runs())
    assert "effbench results" in out.stdout  # the sweep report read the store after the jobs
    # Each job ran in its own process (submitit), not in the launching one.
    assert len(list((tmp_path / "results" / "hydra" / "sweeps").glob("*/.submitit/*/*_result.pkl"))) == 4


@pytest.fixture
def pg_database():
    if not PG_URL:
        pytest.skip("EFFBENCH_TEST_PG_URL is not set")
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))  # a name made here, not input
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_four_job_local_sweep_into_postgres_loses_and_duplicates_nothing(tmp_path, pg_database):
    # Four jobs open the fresh database at once: table creation is serialised, every run is stored once.
    run_effbench("run", *SWEEP, cwd=tmp_path, db=pg_database)
    with open_store(pg_database, read_only=True) as store:
        assert_whole_sweep(store.runs())


def _job_processes(root: psutil.Process) -> list[psutil.Process]:
    procs = []
    for p in root.children(recursive=True):
        try:
            if "submitit.core._submit" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.NoSuchProcess:
            pass
    return procs


@pytest.mark.slow
def test_json_dir_sweep_with_a_killed_job_then_import_and_resume(tmp_path):
    records = tmp_path / "records"
    url = f"json://{records}"
    # Three quick pairs and one that would take minutes (2000 repeats): it is killed mid-run.
    args = ["run", "--multirun", "hydra/launcher=local", "scenario.repeats=2,3,4,2000", *FAST]
    proc = subprocess.Popen(effbench_cmd(*args), cwd=tmp_path, env={**os.environ, "EFFBENCH_DB_URL": url},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, output = [], ""
    try:
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and proc.poll() is None:
            if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
                jobs = _job_processes(psutil.Process(proc.pid))
                if len(jobs) == 1:
                    jobs[0].send_signal(signal.SIGKILL)  # like the OOM killer or a lost node
                    killed.append(jobs[0].pid)
                    break
            time.sleep(0.3)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed, f"the slow job was not found running after three records\n{output[-3000:]}"
    assert proc.returncode != 0  # the multirun reports the lost job

    # The others' records are whole; the killed one is absent (never half-written).
    runs = read_records(records).records
    assert sorted(r.config["scenario"]["repeats"] for r in runs) == [2, 3, 4]
    assert all(r.status is Status.OK for r in runs)
    assert not any(p.name.endswith(".partial") for p in records.iterdir())
    for r in runs:
        assert r.metric("latency.tpot_s").summary.n == r.config["scenario"]["repeats"]

    # Import afterwards, idempotently.
    db = f"sqlite:///{tmp_path}/store.db"
    assert "imported 3 runs" in run_effbench("import", str(records), cwd=tmp_path, db=db).stdout
    assert open_store(db).import_records(read_records(records).records) == (0, 3)  # again: adds nothing
    assert sorted(r.id for r in open_store(db).runs()) == sorted(r.id for r in runs)

    # Resume: a completed pair in the JSON directory is skipped, nothing new is written.
    from hydra import compose, initialize_config_dir

    from effbench.execute import execute
    from effbench.hydra_app import CONFIG_DIR

    before = sorted(p.name for p in records.glob("*.json"))
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for r in runs:
            cfg = compose("config", [*FAST, f"scenario.repeats={r.config['scenario']['repeats']}", f"store.url={url}"])
            assert execute(cfg).id == r.id
    assert sorted(p.name for p in records.glob("*.json")) == before


def test_a_terminated_isolated_sweep_takes_its_running_job_with_it(tmp_path):
    """SIGTERM to the sweep (kill, a CI or SLURM time limit): the job it is running ends too,
    the pending ones never start. A job left behind would measure beside the next sweep."""
    url = f"sqlite:///{tmp_path}/s.db"
    proc = subprocess.Popen(effbench_cmd("run", "--multirun", "hydra/launcher=isolated", "scenario.repeats=20000,2",
                                         *FAST), cwd=tmp_path, env={**os.environ, "EFFBENCH_DB_URL": url},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 300
        jobs = []
        while time.monotonic() < deadline and proc.poll() is None and not jobs:
            jobs = _job_processes(sweep)
            time.sleep(0.3)
        assert jobs, "the first job never started"
        time.sleep(8)  # into its run, past submitit's signal set-up (it ignores SIGTERM)
        everything = sweep.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "sweep stopped (SIGTERM)" in output
    gone, alive = psutil.wait_procs(everything, timeout=10)
    assert alive == [], [p.cmdline() for p in alive]
    # Neither job wrote a record (a store is created on its first write).
    assert not (tmp_path / "s.db").exists() or open_store(url).runs() == []


# --- one GPU per job ----------------------------------------------------------------------------------------------


def test_plan_slots_pins_one_job_per_gpu_and_refuses_sharing_unless_forced():
    assert plan_slots([0, 1, 2, 3]) == [0, 1, 2, 3]
    assert plan_slots([2, 5]) == [2, 5]
    with pytest.raises(SharedDeviceError, match="2 jobs at once on each GPU.*share its compute"):
        plan_slots([0, 1], jobs_per_gpu=2)
    assert plan_slots([0, 1], jobs_per_gpu=2, allow_shared=True) == [0, 1, 0, 1]
    with pytest.raises(SharedDeviceError, match="twice"):
        plan_slots([0, 0])
    with pytest.raises(SharedDeviceError, match="no GPUs"):
        plan_slots([])
    assert gpus_from_env({"CUDA_VISIBLE_DEVICES": "3,1"}) == [3, 1]
    assert gpus_from_env({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpus_from_env({}) is None
    with pytest.raises(SharedDeviceError, match="UUID"):
        gpus_from_env({"CUDA_VISIBLE_DEVICES": "GPU-8a1b"})


JOBLIB = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}
SUBMITIT_LOCAL = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "gpus_per_node": 1}


@pytest.mark.parametrize(("launcher", "env", "refused"), [
    (JOBLIB, {}, "n_jobs=4 runs 4 jobs at once"),
    ({**JOBLIB, "n_jobs": -1}, {}, "n_jobs=-1 runs 8 jobs at once"),
    ({**JOBLIB, "n_jobs": 1}, {}, None),
    (SUBMITIT_LOCAL, {}, "starts every job of the sweep at once"),
    ({**SUBMITIT_LOCAL, "gpus_per_node": 0}, {}, None),  # its jobs see no GPU
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, {}, None),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, {}, None),
    (None, {}, None),  # not under Hydra
    ({"_target_": "x.GpuPinnedLauncher"}, {ENV_JOBS_PER_DEVICE: "1", ENV_PINNED_GPU: "3"}, None),
    ({"_target_": "x.GpuPinnedLauncher"}, {ENV_JOBS_PER_DEVICE: "2", ENV_PINNED_GPU: "3"}, "jobs_per_gpu=2"),
])
def test_execute_refuses_parallel_jobs_on_one_gpu(launcher, env, refused):
    problem, facts = device_sharing_problem("cuda", launcher, env, cpu_count=8)
    if refused:
        assert refused in problem and "share its compute" in problem and ENV_ALLOW_SHARED in problem
        # Forced: allowed, and the record says the device was shared.
        problem, facts = device_sharing_problem("cuda", launcher, {**env, ENV_ALLOW_SHARED: "1"}, cpu_count=8)
        assert problem is None and facts["shared_device_jobs"] >= 2
    else:
        assert problem is None and "shared_device_jobs" not in facts
    # CPU runs are never refused.
    assert device_sharing_problem("cpu", launcher, env, cpu_count=8)[0] is None


PIN_APP = """
import json, os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    start = time.time()
    time.sleep(0.5)
    out = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "EFFBENCH_PINNED_GPU", "EFFBENCH_JOBS_PER_DEVICE")}
    out.update(pid=os.getpid(), start=start, end=time.time())
    Path(HydraConfig.get().runtime.output_dir, "env.json").write_text(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def test_gpu_pinned_launcher_gives_each_job_its_own_gpu(tmp_path):
    """Without a GPU: two pretend GPUs, four jobs; each job's process sees one
    GPU, and a GPU runs its next job only after the last one ended."""
    (tmp_path / "app.py").write_text(PIN_APP)
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "app.py", "--multirun", "+job=1,2,3,4", "hydra/launcher=gpu_pinned",
                          "hydra.launcher.gpus=[0,1]", f"hydra.sweep.dir={sweep}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/env.json"))]
    assert len(jobs) == 4 and len({j["pid"] for j in jobs}) == 4  # a fresh process per job
    assert {j["CUDA_VISIBLE_DEVICES"] for j in jobs} == {"0", "1"}
    for j in jobs:
        assert j["EFFBENCH_PINNED_GPU"] == j["CUDA_VISIBLE_DEVICES"] and j["EFFBENCH_JOBS_PER_DEVICE"] == "1"
    for gpu in ("0", "1"):
        spans = sorted((j["start"], j["end"]) for j in jobs if j["CUDA_VISIBLE_DEVICES"] == gpu)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # never two at once

    refused = subprocess.run([sys.executable, "app.py", "--multirun", "+job=1,2", "hydra/launcher=gpu_pinned",
                              "hydra.launcher.gpus=[0]", "hydra.launcher.jobs_per_gpu=2", f"hydra.sweep.dir={sweep}2"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "jobs_per_gpu=2 would run 2 jobs at once on each GPU" in refused.stderr
    assert "allow_shared_gpu=true" in refused.stderr


@pytest.mark.parametrize("visible", ["", "0,1"])
def test_isolated_launcher_runs_one_fresh_process_at_a_time_seeing_every_gpu(tmp_path, visible):
    (tmp_path / "app.py").write_text(PIN_APP)
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "app.py", "--multirun", "+job=1,2,3", "hydra/launcher=isolated",
                          f"hydra.sweep.dir={sweep}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": visible})
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/env.json"))]
    assert len(jobs) == 3 and len({j["pid"] for j in jobs} | {os.getpid()}) == 4  # fresh processes
    assert all(j["CUDA_VISIBLE_DEVICES"] == visible and j["EFFBENCH_PINNED_GPU"] is None for j in jobs)
    spans = sorted((j["start"], j["end"]) for j in jobs)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # one at a time


# --- the SLURM launcher config ------------------------------------------------------------------------------------


def test_slurm_launcher_config_reaches_the_sbatch_script(tmp_path, monkeypatch):
    """partition, account (from the environment), GPUs per task, time: the sbatch
    header submitit writes from configs/hydra/launcher/slurm.yaml, converted as
    hydra-submitit-launcher's launch() converts it. A fake `srun` stands in for SLURM."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from effbench.hydra_app import CONFIG_DIR

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("EFFBENCH_SLURM_PARTITION", "gpu-h100")
    monkeypatch.setenv("EFFBENCH_SLURM_ACCOUNT", "proj42")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.timeout_min=90"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    params = {k: launcher[k] for k in launcher if k not in ("submitit_folder", "name", "_target_", "max_num_timeout")}
    params = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in params.items()}
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu-h100", "--account=proj42", "--gpus-per-task=1", "--time=90", "--ntasks-per-node=1",
                 "--nodes=1"):
        assert f"#SBATCH {line}\n" in script, script
    assert "--qos" not in script  # unset in the environment: left out, not "None"

"""Run lm-eval tasks on a model instance and turn its results into metrics
named `quality.<task>.<metric>`, each with lm-eval's `higher_is_better`."""

from __future__ import annotations

import logging

import torch

from effbench.config.schema import QualityConfig
from effbench.metrics.record import Metric, Source
from effbench.quality.offline_tasks import CHANCE, OFFLINE_TASKS, ensure_offline_tasks


class QualityError(RuntimeError):
    """The quality step could not score the model (unknown task, lm-eval failure).
    Raised alone, so a runner can store the run's other figures and mark quality failed."""


class UnknownTaskError(ValueError):
    """quality.tasks names a task lm-eval cannot find: a config error."""


def task_manager(cfg: QualityConfig):
    """lm-eval's TaskManager over its registry, the offline suite and
    quality.include_path; raises UnknownTaskError naming the unknown tasks."""
    from lm_eval.tasks import TaskManager

    include = [str(ensure_offline_tasks()), *([cfg.include_path] if cfg.include_path else [])]
    # Indexing lm-eval's own registry (thousands of YAMLs) takes tens of seconds on
    # two cores: only when a task is not in the offline suite or include_path.
    manager = TaskManager(include_path=include, include_defaults=False)
    if not set(cfg.tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include)
    unknown = [t for t in cfg.tasks if t not in manager.all_tasks]
    if unknown:
        raise UnknownTaskError(f"quality.tasks: unknown lm-eval task(s) {', '.join(unknown)}; offline suite: "
                               f"{', '.join(OFFLINE_TASKS)}; or pass quality.include_path=DIR of task YAMLs")
    return manager


def lm_eval_metrics(model: torch.nn.Module, tokenizer, cfg: QualityConfig, device: torch.device,
                    seed: int = 0) -> list[Metric]:
    """The tasks' metrics; any failure is raised as QualityError (its message
    names the tasks and the cause, the original exception is chained)."""
    if not cfg.tasks:
        return []
    try:
        return _run(model, tokenizer, cfg, device, seed)
    except Exception as e:  # noqa: BLE001 - one type for the runner to catch; the cause stays chained
        raise QualityError(f"quality.tasks={list(cfg.tasks)}: {type(e).__name__}: {e}") from e


def lm_eval_metrics_or_warning(model: torch.nn.Module, tokenizer, cfg: QualityConfig, device: torch.device,
                               seed: int, warnings: list[str]) -> list[Metric]:
    """`lm_eval_metrics`, or none with the failure appended to `warnings`: a runner
    stores the run's measured figures whatever happens to its quality step."""
    try:
        return lm_eval_metrics(model, tokenizer, cfg, device, seed)
    except QualityError as e:
        warnings.append(f"quality failed: {e}")
        return []


def _run(model, tokenizer, cfg: QualityConfig, device: torch.device, seed: int) -> list[Metric]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = task_manager(cfg)
    # lm-eval encodes with the tokenizer's default special tokens. A tokenizer
    # that appends EOS (the byte-level ByT5 one) would put an EOS between
    # context and continuation and shift every continuation by one token:
    # encode without special tokens there; keep the default (e.g. Llama's BOS) elsewhere.
    appends_eos = tokenizer("a").input_ids[-1:] == [tokenizer.eos_token_id]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, device=str(device),
              add_bos_token=False if appends_eos else None)
    out = simple_evaluate(model=lm, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot, limit=cfg.limit,
                          task_manager=manager, log_samples=True, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0)
    metrics = []
    for task, results in out["results"].items():
        directions = out["higher_is_better"].get(task, {})
        for key, value in results.items():
            metric, _, _filter = key.partition(",")
            # Results also hold aliases, stderr and sample counts: keep the task's declared metrics.
            if metric not in directions or not isinstance(value, (int, float)):
                continue
            # Per-document scores where lm-eval logs a number per document (acc: 0/1), so
            # the stored samples give a real confidence interval.
            per_doc = [s[metric] for s in out["samples"].get(task, []) if isinstance(s.get(metric), (int, float))]
            chance = f", chance {CHANCE[task]:.0%}" if metric == "acc" and task in CHANCE else ""
            metrics.append(Metric(f"quality.{task}.{metric}", value, "", Source.ANALYTIC, per_doc or [value],
                                  directions.get(metric),
                                  note=f"lm-eval {task}, {len(per_doc) or 'aggregate'} docs{chance}"))
    return metrics

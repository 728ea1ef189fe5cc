"""lm-eval quality: the offline suite runs without network, and it discriminates."""

import os

import pytest
import torch
from scipy import stats

from effbench.config.schema import QualityConfig
from effbench.quality.lm_eval_runner import lm_eval_metrics
from effbench.quality.offline_tasks import CONTEXT_CHARS, MC_TASK, multiple_choice_items


def test_multiple_choice_items_are_deterministic_and_well_formed():
    a, b = multiple_choice_items(), multiple_choice_items()
    assert a == b and len(a) > 150
    for item in a:
        assert len(item["context"]) == CONTEXT_CHARS and len(item["choices"]) == 4
        assert len(set(item["choices"])) == 4
    labels = [x["label"] for x in a]
    assert all(labels.count(k) > len(a) / 8 for k in range(4))  # the true answer is not always in one place


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    os.environ["EFFBENCH_TASK_DIR"] = str(tmp_path_factory.mktemp("tasks"))
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"  # conftest


def _mc_accuracy(model, tok):
    metrics = lm_eval_metrics(model, tok, QualityConfig(tasks=[MC_TASK], batch_size=16), torch.device("cpu"))
    (acc,) = [m for m in metrics if m.name == f"quality.{MC_TASK}.acc"]
    assert acc.higher_is_better is True and len(acc.samples) == len(multiple_choice_items())
    return acc


def test_random_model_is_at_chance(offline_env, tiny):
    acc = _mc_accuracy(tiny.model, tiny.tokenizer)
    n = len(acc.samples)
    # Two-sided binomial test against 1/4: a random-init model must not look better than chance.
    assert stats.binomtest(round(acc.value * n), n, 0.25).pvalue > 0.01, acc.value


def test_trained_model_beats_chance(offline_env, trained_tiny):
    model, tok = trained_tiny
    acc = _mc_accuracy(model, tok)
    n = len(acc.samples)
    assert acc.value > 0.35
    assert stats.binomtest(round(acc.value * n), n, 0.25, alternative="greater").pvalue < 1e-3


def test_rolling_perplexity_task_reports_directions(offline_env, tiny):
    metrics = {m.name: m for m in lm_eval_metrics(tiny.model, tiny.tokenizer,
                                                    QualityConfig(tasks=["effbench_pydoc_ppl"]), torch.device("cpu"))}
    assert set(metrics) == {f"quality.effbench_pydoc_ppl.{k}" for k in ("word_perplexity", "byte_perplexity",
                                                                        "bits_per_byte")}
    assert all(m.higher_is_better is False for m in metrics.values())
    # Random init over a 384-symbol vocabulary: about log2(384) bits per byte, far from a trained model.
    assert metrics["quality.effbench_pydoc_ppl.bits_per_byte"].value > 6


def test_unknown_task_names_the_options(offline_env, tiny):
    with pytest.raises(ValueError, match="unknown lm-eval task.*no_such_task.*effbench_pydoc_mc"):
        lm_eval_metrics(tiny.model, tiny.tokenizer, QualityConfig(tasks=["no_such_task"]), torch.device("cpu"))

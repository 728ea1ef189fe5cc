"""An lm-eval task suite built offline, deterministically, from text that ships
with Python (the held-out split of `pydoc_data.topics`, see effbench.data).

- `effbench_pydoc_ppl` (loglikelihood_rolling): each held-out topic as one
  document; lm-eval reports word perplexity, byte perplexity and bits per byte.
- `effbench_pydoc_mc` (multiple_choice, metric `acc`): each held-out topic is
  cut into 208-character windows every 104 characters; a window's first 192
  characters are the context and the true choice is its next 16 characters;
  the three distractors are the 16-character continuations of windows from
  *other* held-out topics, drawn with a fixed seed. Choices are shuffled with
  the same seed. Chance level is 1/4 = 25%. The continuation is short on
  purpose: what separates the true one is how it joins the context (finishing
  the word, the sentence, the markup), and a long continuation would drown
  that in its own, context-free likelihood (with 48 characters a byte-level
  model at loss 2.3 scored 28%, with 16 characters 40%, on 60 items).

Files are rebuilt only when missing, under a cache directory
(`$EFFBENCH_TASK_DIR`, default `results/lm_eval_tasks`).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from effbench.data import load_corpus

CONTEXT_CHARS, CONTINUATION_CHARS, N_CHOICES, SEED = 192, 16, 4, 1234
WINDOW_STRIDE = 104  # windows overlap by half: about 250 items from the held-out topics
MC_TASK, PPL_TASK = "effbench_pydoc_mc", "effbench_pydoc_ppl"
OFFLINE_TASKS = (MC_TASK, PPL_TASK)
SUITE_VERSION = 2  # bump when the construction changes, so cached files are rebuilt


def task_dir() -> Path:
    return Path(os.environ.get("EFFBENCH_TASK_DIR", "results/lm_eval_tasks")) / f"v{SUITE_VERSION}"


def multiple_choice_items(seed: int = SEED) -> list[dict]:
    window = CONTEXT_CHARS + CONTINUATION_CHARS
    windows = [(doc.name, doc.text[i : i + window])
               for doc in load_corpus("pydoc").heldout
               for i in range(0, len(doc.text) - window + 1, WINDOW_STRIDE)]
    rng = random.Random(seed)
    items = []
    for name, text in windows:
        others = [w[CONTEXT_CHARS:] for n, w in windows if n != name]
        choices = [text[CONTEXT_CHARS:], *rng.sample(others, N_CHOICES - 1)]
        order = list(range(N_CHOICES))
        rng.shuffle(order)
        items.append({"context": text[:CONTEXT_CHARS], "choices": [choices[i] for i in order],
                      "label": order.index(0), "topic": name})
    return items


_MC_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {version}
"""

_PPL_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: {version}
"""


def ensure_offline_tasks() -> Path:
    """Write the suite's data and task YAMLs (once); returns the include path for lm-eval."""
    d = task_dir()
    if (d / f"{PPL_TASK}.yaml").is_file():
        return d
    d.mkdir(parents=True, exist_ok=True)
    mc, ppl = d / f"{MC_TASK}.jsonl", d / f"{PPL_TASK}.jsonl"
    mc.write_text("".join(json.dumps(x) + "\n" for x in multiple_choice_items()))
    ppl.write_text("".join(json.dumps({"text": doc.text, "topic": doc.name}) + "\n"
                           for doc in load_corpus("pydoc").heldout))
    (d / f"{MC_TASK}.yaml").write_text(_MC_YAML.format(task=MC_TASK, data=mc.resolve(), version=SUITE_VERSION))
    # Written last: its presence marks the suite complete.
    (d / f"{PPL_TASK}.yaml").write_text(_PPL_YAML.format(task=PPL_TASK, data=ppl.resolve(), version=SUITE_VERSION))
    return d

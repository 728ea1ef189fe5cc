"""An lm-eval task suite built offline, deterministically, from text that ships
with Python: the held-out splits of `pydoc_data.topics` and of the standard
library's sources (see effbench.data), so fine-tuning on the train splits never
trains on the test items.

Multiple choice (metric `acc`, 4 choices, chance 25%):

- `effbench_pydoc_mc`: which word comes next in the documentation? The context
  is up to 120 characters of a held-out topic ending at the end of a word; the
  true answer is the next word (a plain word after a single space, not markup
  or code); the distractors are answers of items from *other* topics.
- `effbench_stdlib_defname`: which function does a docstring describe? The
  context is the first paragraph of a public stdlib function's docstring
  followed by `def`; the true answer is the function's name, the distractors
  are names of other documented functions (a docstring that spells its own
  name is left out). Needs reading the docstring: a random model is at chance.

Every item ends its context at a word boundary and lm-eval joins context and
answer with one space, so the answer begins a new word: a byte-level and a
subword (BPE, SentencePiece) tokenizer alike encode the context as a token
prefix of context + answer (`misaligned_items` checks a tokenizer). Items are
shuffled once with a fixed seed, so `quality.limit=N` takes a fair sample.

Rolling perplexity (word perplexity, byte perplexity, bits per byte):

- `effbench_pydoc_ppl`: each held-out documentation topic is one document.
- `effbench_stdlib_ppl`: top-level functions and classes of held-out stdlib
  modules (code tables under encodings/ left out), a seeded sample of about
  25,000 characters.

The items depend on the Python version (its docs and stdlib differ). Files are
built only when missing, under a cache directory (`$EFFBENCH_TASK_DIR`, default
`results/lm_eval_tasks`), one folder per SUITE_VERSION and Python version.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from effbench.data import load_corpus

SEED, N_CHOICES = 1234, 4
TARGET_DELIMITER = " "  # lm-eval puts it between context and answer
MC_TASK, DEFNAME_TASK = "effbench_pydoc_mc", "effbench_stdlib_defname"
PPL_TASK, STDLIB_PPL_TASK = "effbench_pydoc_ppl", "effbench_stdlib_ppl"
MC_TASKS = (MC_TASK, DEFNAME_TASK)
PPL_TASKS = (PPL_TASK, STDLIB_PPL_TASK)
OFFLINE_TASKS = (*MC_TASKS, *PPL_TASKS)
CHANCE = {task: 1 / N_CHOICES for task in MC_TASKS}
SUITE_VERSION = 3  # bump when the construction changes, so cached files are rebuilt

# effbench_pydoc_mc
CONTEXT_CHARS = 120  # at most; the context starts at the first word inside this window
ANSWER_WORDS = 1
ITEM_STRIDE_WORDS = 12  # at least this many words between two items' answers (about 290 items)
_PLAIN_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[.,;:]?")  # prose, not markup or code
# effbench_stdlib_defname
DOC_CHARS = (20, 200)  # first docstring paragraph length kept
# effbench_stdlib_ppl
STDLIB_PPL_CHARS = 25_000
DEFINITION_CHARS = (200, 3000)


def task_dir() -> Path:
    # The items come from this Python's own docs and stdlib: one folder per Python version.
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(os.environ.get("EFFBENCH_TASK_DIR", "results/lm_eval_tasks")) / f"v{SUITE_VERSION}-{python}"


def _with_distractors(answers: list[tuple[str, str, str]], seed: int) -> list[dict]:
    """(group, context, answer) → 4-way items: the answer plus three answers of
    items from other groups, order shuffled; the items themselves shuffled.
    Distractors are drawn as often as answers occur (a frequent answer is a
    frequent distractor), so true answer and distractors come from one
    distribution and a model that ignores the context, e.g. one that prefers
    short or common answers, is at chance."""
    rng = random.Random(seed)
    items = []
    for group, context, answer in answers:
        others = [a for g, _, a in answers if g != group and a != answer]
        if len(set(others)) < N_CHOICES - 1:
            continue
        distractors: list[str] = []
        while len(distractors) < N_CHOICES - 1:
            if (pick := rng.choice(others)) not in distractors:
                distractors.append(pick)
        choices = [answer, *distractors]
        order = list(range(N_CHOICES))
        rng.shuffle(order)
        items.append({"context": context, "choices": [choices[i] for i in order], "label": order.index(0),
                      "source": group})
    rng.shuffle(items)
    return items


def _next_words(text: str) -> Iterator[tuple[str, str]]:
    """(context, next ANSWER_WORDS words) at word boundaries of one document."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    last = -ITEM_STRIDE_WORDS
    for j in range(1, len(words) - ANSWER_WORDS + 1):
        if j - last < ITEM_STRIDE_WORDS:
            continue
        answer = words[j : j + ANSWER_WORDS]
        gaps = [text[words[i - 1][1] : words[i][0]] for i in range(j, j + ANSWER_WORDS)]
        if any(g != " " for g in gaps) or not all(_PLAIN_WORD.fullmatch(text[a:b]) for a, b in answer):
            continue
        end = words[j - 1][1]
        start = next(a for a, _ in words if a >= end - CONTEXT_CHARS)
        last = j
        yield text[start:end], text[answer[0][0] : answer[-1][1]]


def next_words_items(seed: int = SEED) -> list[dict]:
    """effbench_pydoc_mc: which word comes next in a held-out pydoc topic."""
    return _with_distractors([(doc.name, context, answer)
                              for doc in load_corpus("pydoc").heldout
                              for context, answer in _next_words(doc.text)], seed)


@functools.cache
def _stdlib_modules() -> list[tuple[str, str, ast.Module]]:
    """Held-out stdlib modules: (name, source, syntax tree); code tables under encodings/ left out."""
    modules = []
    for doc in load_corpus("stdlib").heldout:
        if not doc.name.startswith("encodings/"):
            try:
                modules.append((doc.name, doc.text, ast.parse(doc.text)))
            except SyntaxError:  # a module written for another Python version
                continue
    return modules


def defname_items(seed: int = SEED) -> list[dict]:
    """effbench_stdlib_defname: which function a docstring's first paragraph describes."""
    answers = []
    for _, _, tree in _stdlib_modules():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
            if DOC_CHARS[0] <= len(doc) <= DOC_CHARS[1] and node.name.lower() not in doc.lower():
                answers.append((node.name, f'"""{doc}"""\ndef', node.name))
    return _with_distractors(answers, seed)


def stdlib_ppl_documents(seed: int = SEED) -> list[dict]:
    """effbench_stdlib_ppl: a seeded sample of held-out top-level functions and classes."""
    definitions = [(f"{name}:{node.name}", segment)
                   for name, source, tree in _stdlib_modules()
                   for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                   and (segment := ast.get_source_segment(source, node))
                   and DEFINITION_CHARS[0] <= len(segment) <= DEFINITION_CHARS[1]]
    random.Random(seed).shuffle(definitions)
    documents, total = [], 0
    for name, text in definitions:
        if total >= STDLIB_PPL_CHARS:
            break
        documents.append({"text": text, "source": name})
        total += len(text)
    return documents


def misaligned_items(items: list[dict], tokenizer, delimiter: str = TARGET_DELIMITER) -> list[int]:
    """Indices of items where some choice does not tokenize with the context as
    a token prefix of context + delimiter + choice, or leaves no continuation
    token, encoded as lm-eval encodes a pair (trailing whitespace of the context
    moved to the continuation, no special tokens): lm-eval would score such an
    item on misaligned tokens, or stop (`assert len(continuation_enc) > 0`)."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    bad = []
    for i, item in enumerate(items):
        context = item["context"].rstrip()
        head = encode(context)
        for choice in item["choices"]:
            whole = encode(item["context"] + delimiter + choice)
            if whole[: len(head)] != head or len(whole) == len(head):
                bad.append(i)
                break
    return bad


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
target_delimiter: "{delimiter}"
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
    """Write the suite's data and task YAMLs (once); returns the include path for lm-eval.
    Built in a temporary folder renamed into place, so a concurrent or killed
    build never leaves a partial suite."""
    d = task_dir()
    if d.is_dir():
        return d
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}-", dir=d.parent))
    rows = {MC_TASK: next_words_items(), DEFNAME_TASK: defname_items(),
            PPL_TASK: [{"text": doc.text, "source": doc.name} for doc in load_corpus("pydoc").heldout],
            STDLIB_PPL_TASK: stdlib_ppl_documents()}
    try:
        for task, data in rows.items():
            (tmp / f"{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in data))
            template = _MC_YAML if task in MC_TASKS else _PPL_YAML
            # The YAML names the data file where it will be once the folder is renamed.
            (tmp / f"{task}.yaml").write_text(template.format(task=task, data=(d / f"{task}.jsonl").resolve(),
                                                              version=SUITE_VERSION, delimiter=TARGET_DELIMITER))
        os.rename(tmp, d)
    except OSError:
        if not d.is_dir():  # not a concurrent build that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d

"""Supervised fine-tuning (SFT) data: instruction / input / output examples
with a fixed train / held-out split.

Two sources (the run's `data` group):

* `data=pydoc` (default) — an instruction set **derived deterministically from
  the bundled pydoc corpus** (`pydoc_data.topics`, the 79 topics of Python's
  language reference that ship with every Python). No model, no randomness:
  the same Python version always gives the same examples. Two tasks:

  1. *Heading → opening paragraph.* Every heading of a topic (its title, a
     line underlined with ``*``, and each section heading, underlined with
     ``=``, ``-`` or ``~``) paired with the first prose paragraph below it and
     before the next heading. Instruction: ``Give the opening paragraph of the
     Python documentation section "<heading>".``; input: ``Topic: <topic
     title>`` for a section inside a topic, empty for the topic's own title;
     output: that paragraph, cut after the last whole sentence that fits in
     `MAX_OUTPUT_CHARS` (a paragraph whose first sentence is already longer is
     skipped).
  2. *Passage → next sentence.* Every prose paragraph is split into
     sentences; for each sentence after the first, the input is the two
     sentences before it (only the one before it when the two are longer than
     `MAX_INPUT_CHARS`; skipped when even that one is) and the output is that
     sentence. Instruction: ``Continue this passage from the Python
     documentation with its next sentence.``. Outputs shorter than
     `MIN_SENTENCE_CHARS` or longer than `MAX_OUTPUT_CHARS` are skipped.

  A *prose paragraph* is a blank-line-separated block, not a heading, whose
  lines all share one indentation (hanging indents are list items,
  definitions and code), that does not start with a list marker (``*``, ``-``,
  ``1.``), a version note (``Added in version``, ``Changed in version``,
  ``Deprecated``, ...) or a ``Note:`` / ``See also:`` / ``Warning:`` label,
  that starts with an upper-case letter, a quote, ``(`` or ``*``, ends with
  ``.``, ``:``, ``?``, ``!`` or ``.)``, holds no ``::=`` (grammar) and no
  ``>>>`` / ``...`` prompt, and is at least 80% letters and spaces (code and
  tables are not); its lines are joined with single spaces. Sentences end at ``.``, ``?`` or ``!`` followed by
  whitespace and an upper-case letter, a quote or a bracket, except after the
  abbreviations in `_ABBREVIATIONS` (``e.g.``, ``i.e.``, ``etc.``, ...).
  Duplicate (instruction, input, output) triples are kept once, in first-seen
  order.

  **Split**: by topic, with the corpus's own rule (`effbench.data.corpus`:
  sha256 of the topic name, held out when below `data.heldout_fraction`), so
  no held-out topic's text is ever trained on.

* `data=local data.path=FILE.jsonl` — your own examples, one JSON object a
  line, Alpaca-style fields `instruction`, `input` (optional) and `output`;
  the field names are `scenario.instruction_field` / `input_field` /
  `output_field`. Split per line: sha256 of ``<file name>:<line number>``
  below `data.heldout_fraction` is held out.

Formatting (`format_example`) and tokenization (`encode`) are here too: the
prompt is Alpaca's short template, the response is the output followed by the
tokenizer's EOS, and only response tokens carry labels (prompt tokens are
labelled -100, ignored by the loss). See docs/sft-data.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from effbench.data.corpus import _is_heldout, load_corpus

SFT_SOURCES = ("pydoc", "local")
MAX_INPUT_CHARS = 240
MAX_OUTPUT_CHARS = 300
MIN_SENTENCE_CHARS = 20
IGNORE_INDEX = -100  # label of tokens the loss skips (transformers' convention)

TITLE_INSTRUCTION = 'Give the opening paragraph of the Python documentation section "{heading}".'
NEXT_SENTENCE_INSTRUCTION = "Continue this passage from the Python documentation with its next sentence."


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str
    source: str  # the document (topic, or file:line) it came from


@dataclass(frozen=True)
class SftDataset:
    name: str
    train: list[Example]
    heldout: list[Example]

    @property
    def fingerprint(self) -> str:
        """sha256 (first 12 hex digits) of every example in order: which data a run saw."""
        h = hashlib.sha256()
        for split in (self.train, self.heldout):
            for e in split:
                h.update(json.dumps([e.instruction, e.input, e.output]).encode())
            h.update(b"\0")
        return h.hexdigest()[:12]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.heldout)} held-out examples, "
                f"sha256 {self.fingerprint}")


# ---------------------------------------------------------------------------
# Derivation from pydoc

_UNDERLINE = re.compile(r"^([*=\-~^\"'`#+])\1{2,}$")
_NOT_PROSE = re.compile(r"^(\* |- |\d+\. |\(\d+\) |Added in version|New in version|Changed in version|Deprecated"
                        r"|Note:|See also:|Warning:|Footnotes)")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp.", "Mr.", "Dr.")
_PROSE_ENDS = (".", ":", "?", "!", ".)")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"“'(\[])")


def _blocks(text: str) -> list[list[str]]:
    blocks, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.rstrip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def split_sentences(paragraph: str) -> list[str]:
    parts = _SENTENCE_END.split(paragraph)
    out: list[str] = []
    for part in parts:
        if out and out[-1].endswith(_ABBREVIATIONS):
            out[-1] += " " + part  # not a sentence end: an abbreviation
        else:
            out.append(part)
    return [s.strip() for s in out if s.strip()]


def _prose(block: list[str]) -> str | None:
    """The block as one paragraph if it is prose, else None (see the module docstring)."""
    if len({len(line) - len(line.lstrip()) for line in block}) > 1:
        return None  # hanging indents: a list item, a definition, or code
    para = " ".join(line.strip() for line in block)
    if _NOT_PROSE.match(para) or not para.endswith(_PROSE_ENDS) or not (para[0].isupper() or para[0] in "\"“(*"):
        return None
    if "::=" in para or para.startswith((">>>", "...")):
        return None  # grammar or an interactive session
    if sum(ch.isalpha() or ch == " " for ch in para) < 0.8 * len(para):
        return None  # mostly symbols: code or a table
    return para


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, prose paragraphs under it) in order."""
    sections: list[tuple[str, list[str]]] = []
    for block in _blocks(text):
        # A heading is a line followed by its underline; it may share a block with text below it.
        while len(block) >= 2 and _UNDERLINE.match(block[1].strip()) and not block[0].startswith(" "):
            sections.append((block[0].strip(), []))
            block = block[2:]
        if block and sections and (para := _prose(block)):
            sections[-1][1].append(para)
    return sections


def _first_sentences(paragraph: str, limit: int) -> str | None:
    out = ""
    for s in split_sentences(paragraph):
        candidate = f"{out} {s}".strip()
        if len(candidate) > limit:
            break
        out = candidate
    return out or None


def derive_examples(name: str, text: str) -> list[Example]:
    """The two tasks of the module docstring, for one pydoc topic."""
    examples: list[Example] = []
    sections = _sections(text)
    if not sections:
        return examples
    topic_title = sections[0][0]
    for i, (heading, paragraphs) in enumerate(sections):
        if paragraphs:
            opening = _first_sentences(paragraphs[0], MAX_OUTPUT_CHARS)
            if opening:
                examples.append(Example(TITLE_INSTRUCTION.format(heading=heading),
                                        "" if i == 0 else f"Topic: {topic_title}", opening, name))
        for para in paragraphs:
            sentences = split_sentences(para)
            for j in range(1, len(sentences)):
                target = sentences[j]
                if not MIN_SENTENCE_CHARS <= len(target) <= MAX_OUTPUT_CHARS:
                    continue
                passage = " ".join(sentences[max(0, j - 2) : j])
                if len(passage) > MAX_INPUT_CHARS:
                    passage = sentences[j - 1]  # the one sentence before, if that fits
                if len(passage) <= MAX_INPUT_CHARS:
                    examples.append(Example(NEXT_SENTENCE_INSTRUCTION, passage, target, name))
    return examples


def _dedupe(examples: list[Example]) -> list[Example]:
    seen, out = set(), []
    for e in examples:
        key = (e.instruction, e.input, e.output)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def pydoc_sft(heldout_fraction: float = 0.1) -> SftDataset:
    corpus = load_corpus("pydoc", heldout_fraction=heldout_fraction)
    train = _dedupe([e for d in corpus.train for e in derive_examples(d.name, d.text)])
    heldout = _dedupe([e for d in corpus.heldout for e in derive_examples(d.name, d.text)])
    return SftDataset("pydoc-sft", train, heldout)


# ---------------------------------------------------------------------------
# Local JSONL


def local_sft(path: str, heldout_fraction: float = 0.1, instruction_field: str = "instruction",
              input_field: str = "input", output_field: str = "output") -> SftDataset:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data.path={path} does not exist")
    if p.suffix != ".jsonl":
        raise ValueError(f"data.path={path}: fine-tuning reads instruction/response examples from a .jsonl file "
                         f"(fields {instruction_field!r}, {input_field!r}, {output_field!r})")
    train, heldout = [], []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        for key in (instruction_field, output_field):
            if key not in row:
                raise KeyError(f"{p}:{i + 1} has no field {key!r} (set scenario.instruction_field / "
                               f"scenario.output_field); fields: {sorted(row)}")
        name = f"{p.name}:{i + 1}"
        e = Example(str(row[instruction_field]), str(row.get(input_field) or ""), str(row[output_field]), name)
        (heldout if _is_heldout(name, heldout_fraction) else train).append(e)
    if not train or not heldout:
        raise ValueError(f"{p}: {len(train) + len(heldout)} examples gave an empty split at "
                         f"data.heldout_fraction={heldout_fraction}")
    return SftDataset(f"local:{p.name}", train, heldout)


def load_sft(source: str = "pydoc", path: str | None = None, heldout_fraction: float = 0.1,
             instruction_field: str = "instruction", input_field: str = "input",
             output_field: str = "output") -> SftDataset:
    if source == "pydoc":
        return pydoc_sft(heldout_fraction)
    if source == "local":
        if not path:
            raise ValueError("data.source=local needs data.path=FILE.jsonl (instruction/response examples)")
        return local_sft(path, heldout_fraction, instruction_field, input_field, output_field)
    raise ValueError(f"fine-tuning data: data.source={source!r}; choose one of {', '.join(SFT_SOURCES)} "
                     "(pydoc: instructions derived from the bundled docs; local: your .jsonl)")


# ---------------------------------------------------------------------------
# Formatting and tokenization


def format_example(e: Example) -> tuple[str, str]:
    """(prompt, response): Alpaca's template without its preamble (it would
    cost ~130 tokens of every short byte-level sequence)."""
    if e.input:
        prompt = f"### Instruction:\n{e.instruction}\n\n### Input:\n{e.input}\n\n### Response:\n"
    else:
        prompt = f"### Instruction:\n{e.instruction}\n\n### Response:\n"
    return prompt, e.output


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens


def encode(examples: list[Example], tokenizer, seq_len: int) -> tuple[list[Encoded], int]:
    """Token ids and labels, cut to seq_len. Returns (encoded, dropped): an
    example whose prompt fills seq_len (no response token left) is dropped."""
    prompts, responses = zip(*(format_example(e) for e in examples)) if examples else ((), ())
    p_ids = tokenizer(list(prompts), add_special_tokens=False).input_ids
    r_ids = tokenizer(list(responses), add_special_tokens=False).input_ids
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out, dropped = [], 0
    for p, r in zip(p_ids, r_ids):
        ids = (p + r + eos)[:seq_len]
        labels = ([IGNORE_INDEX] * len(p) + r + eos)[:seq_len]
        if all(x == IGNORE_INDEX for x in labels):
            dropped += 1
            continue
        out.append(Encoded(ids, labels))
    return out, dropped


def pack(encoded: list[Encoded], seq_len: int) -> list[Encoded]:
    """Examples concatenated in order and cut into full seq_len rows (the
    incomplete tail is dropped). Attention crosses example boundaries within a
    row, as in TRL's default packing; labels keep every prompt masked."""
    ids = [t for e in encoded for t in e.input_ids]
    labels = [t for e in encoded for t in e.labels]
    return [Encoded(ids[i : i + seq_len], labels[i : i + seq_len])
            for i in range(0, len(ids) - seq_len + 1, seq_len)]

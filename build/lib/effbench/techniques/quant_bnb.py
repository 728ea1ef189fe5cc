"""bitsandbytes: 4-bit NF4 / FP4 (QLoRA's formats) and LLM.int8().

Quantized the way bitsandbytes is used with transformers: `from_pretrained`
with a `BitsAndBytesConfig`. A built-in or artifact model is saved to a
temporary directory and loaded back with the config. Both modes run on a CPU
with bitsandbytes ≥ 0.46 (checked here with 0.50: NF4, FP4 and int8).

Formats: 4-bit packs two weights per byte, one absmax per block of 64 weights
(fp32; with `double_quant` the absmaxes are themselves 8-bit quantized), plus a
16-entry code book per layer. int8 stores one int8 per weight and one fp32
scale per output row; at run time activation outliers above `int8_threshold`
stay in 16-bit (LLM.int8()). Activations between layers run in `compute_dtype`
(bitsandbytes casts them to fp16 inside its int8 matmul).

bitsandbytes 0.50's CPU fast path for 4-bit (on CPUs with AVX512-BF16) repacks a
layer's weights on its first forward and asserts that its output features are a
multiple of 32 and its input features a multiple of the block size, 64 (the
tiny preset's MLP width, 688, is neither): such layers are kept on the generic
4-bit path, which computes the same product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from effbench.techniques.quant_common import QuantConfig, QuantSpec, saved_copy, torch_dtype
from effbench.techniques.registry import register

if TYPE_CHECKING:
    import torch

_REQUIRES = (("bitsandbytes", "bitsandbytes"),)
_CPU_BLOCK_N = 32  # bitsandbytes.functional._convert_weight_packed_for_cpu's block_n


@dataclass
class Bnb4bitConfig(QuantConfig):
    method: str = "bnb-4bit"
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = False  # quantize the per-block absmax too (QLoRA's "double quantization")


@dataclass
class BnbInt8Config(QuantConfig):
    method: str = "bnb-int8"
    int8_threshold: float = 6.0  # activation outlier threshold of LLM.int8()


def _load_quantized(model: torch.nn.Module, quant_config, cfg: QuantConfig, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(cfg.compute_dtype)
    with saved_copy(model.to(dtype)) as path:
        quantized = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant_config, dtype=dtype,
                                                         device_map={"": device})
    return quantized.eval()


def _apply_4bit(model: torch.nn.Module, cfg: Bnb4bitConfig, device: torch.device) -> torch.nn.Module:
    from transformers import BitsAndBytesConfig

    if cfg.quant_type not in ("nf4", "fp4"):
        raise ValueError(f"technique.quant_type={cfg.quant_type!r}; choose nf4 or fp4")
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                            bnb_4bit_use_double_quant=cfg.double_quant,
                            bnb_4bit_compute_dtype=torch_dtype(cfg.compute_dtype),
                            llm_int8_skip_modules=list(cfg.skip_modules))
    quantized = _load_quantized(model, qc, cfg, device)
    for module in quantized.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False) and (
                module.out_features % _CPU_BLOCK_N or module.in_features % module.weight.quant_state.blocksize):
            module.support_avx512bf16_for_cpu = False
    return quantized


def _apply_int8(model: torch.nn.Module, cfg: BnbInt8Config, device: torch.device) -> torch.nn.Module:
    from transformers import BitsAndBytesConfig

    qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=cfg.int8_threshold,
                            llm_int8_skip_modules=list(cfg.skip_modules))
    return _load_quantized(model, qc, cfg, device)


for _method, _schema, _apply in (("bnb-4bit", Bnb4bitConfig, _apply_4bit), ("bnb-int8", BnbInt8Config, _apply_int8)):
    register(QuantSpec(
        method=_method,
        axis="inference",
        schema=_schema,
        apply=_apply,
        devices=("cpu", "cuda"),
        requires=_REQUIRES,
    ))

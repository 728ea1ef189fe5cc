"""QLoRA: LoRA adapters trained on a base quantized to 4 bits with bitsandbytes
(the inference axis' `bnb-nf4`), as in Dettmers et al. 2023.

The base is quantized while loading (`quant_bnb._apply_4bit`: NF4 by default,
optional double quantization, `compute_dtype` for the matmuls), prepared with
peft's `prepare_model_for_kbit_training` (norms and other full-precision
parameters in fp32, input gradients on), then adapted exactly like `lora`:
same targets, rank, alpha, trainable count r·(d_in + d_out) per matrix. The
saved artifact is the adapter, which applies to the unquantized base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from effbench.config.schema import DType
from effbench.techniques.peft_common import AXIS
from effbench.techniques.peft_lora import LoraFamilyConfig, _check, peft_config
from effbench.techniques.quant_bnb import Bnb4bitConfig, _apply_4bit
from effbench.techniques.quant_common import QuantSpec
from effbench.techniques.registry import register

if TYPE_CHECKING:
    import torch


@dataclass
class QLoraConfig(LoraFamilyConfig):
    method: str = "qlora"
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # QLoRA's double quantization of the per-block absmax
    compute_dtype: DType = DType.float32  # bfloat16 on a GPU, as the paper
    skip_modules: list[str] = field(default_factory=lambda: ["lm_head"])


def _apply(model: torch.nn.Module, cfg: QLoraConfig, device: torch.device) -> torch.nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    quant = Bnb4bitConfig(name=cfg.name, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                          compute_dtype=cfg.compute_dtype, skip_modules=list(cfg.skip_modules))
    lora = peft_config(model, cfg)  # targets resolved on the full-precision model: 4-bit layers are no nn.Linear
    base = _apply_4bit(model, quant, device)
    for module in base.modules():
        # bitsandbytes repacks a 4-bit layer for its AVX512-BF16 CPU kernel on the first
        # eval-mode forward (the step-0 evaluation) and from then on runs a kernel with no
        # backward: gradients would stop at that layer. Training keeps the autograd path.
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    return get_peft_model(base, lora)


register(QuantSpec(
    method="qlora",
    axis=AXIS,
    schema=QLoraConfig,
    apply=_apply,
    check=_check,
    requires=(("bitsandbytes", "bitsandbytes"),),
))

"""Importing this package registers every technique module (light: each imports
its libraries only when it is applied)."""

from effbench.techniques import architecture, precision  # noqa: F401  (each registers itself)
from effbench.techniques import quant_bnb, quant_calibrated, quant_hqq, quant_quanto, quant_torchao  # noqa: F401
from effbench.techniques import freeze, full, peft_lora, peft_qlora  # noqa: F401  (the fine-tuning axis)
from effbench.techniques.registry import (TECHNIQUES, UnsupportedTechnique, get_technique, registered_methods,
                                          torch_dtype)

__all__ = ["TECHNIQUES", "UnsupportedTechnique", "get_technique", "registered_methods", "torch_dtype"]

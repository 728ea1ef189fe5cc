"""Architecture builders: one module per family, each registering itself.

A builder turns a size preset (`BuiltinModelConfig`: width, depth, heads, FFN
size, context) plus family options (`cfg.arch_options`) into a randomly
initialised transformers model with `forward(input_ids, labels=...)` returning
`.loss` / `.logits`.
"""

from effbench.models.architectures import llama  # noqa: F401  (registers itself)
from effbench.models.architectures.base import ARCHITECTURES, ArchitectureError, build_architecture

__all__ = ["ARCHITECTURES", "ArchitectureError", "build_architecture"]

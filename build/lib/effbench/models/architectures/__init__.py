"""Architecture builders: one module per family, each registering itself.

A builder turns a size preset (`BuiltinModelConfig`: width, depth, heads, FFN
size, context) plus family options (`cfg.arch_options`) into a randomly
initialised transformers model with `forward(input_ids, labels=...)` returning
`.loss` / `.logits`. `active_parameters`, `kv_cache_bytes_per_token` and
`recurrent_state_bytes` give each family's analytic sizes.
"""

from effbench.models.architectures import (  # noqa: F401  (each registers itself)
    deepseek_v3,
    falcon,
    gpt2,
    gpt_neox,
    llama,
    mamba2,
    mixtral,
    nsa,
    rwkv,
)
from effbench.models.architectures.base import (
    ARCHITECTURES,
    Architecture,
    ArchitectureError,
    active_parameters,
    architecture_of,
    build_architecture,
    kv_cache_bytes_per_token,
    recurrent_state_bytes,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ArchitectureError",
    "active_parameters",
    "architecture_of",
    "build_architecture",
    "kv_cache_bytes_per_token",
    "recurrent_state_bytes",
]

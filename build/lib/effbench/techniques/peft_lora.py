"""The LoRA family through peft (the fine-tuning axis), one registration per method:

- `lora`: `peft.LoraConfig` (B = 0 at init: outputs unchanged at step 0).
- `rslora`: `use_rslora=True` (scale alpha/√r instead of alpha/r).
- `dora`: `use_dora=True` (adds a trained magnitude vector per matrix).
- `pissa`: `init_lora_weights="pissa"`, or `pissa_niter_<n>` (fast randomized
  SVD; the `pissa-niter4` technique). A and B start from the top-r singular
  vectors and the base weight becomes the residual: base weights change,
  outputs do not (up to rounding).
- `loraplus`: plain LoRA trained with `peft.optimizers.create_loraplus_optimizer`
  (B's learning rate = `loraplus_lr_ratio` × A's).

Common settings: rank `r`, `alpha`, `dropout`, `target_modules` and
`target_parameters`. Left at null the targets are the model family's
(`FAMILY_TARGETS`; Llama: q/k/v/o/gate/up/down projections, no LM head), or
peft's `all-linear` for a family not in the table. In transformers 5 the
experts of MoE models (Mixtral, Qwen2-MoE) are fused 3-D parameters, not
`nn.Linear`s, so `target_modules` cannot reach them: they are adapted through
peft's `target_parameters` (default for those families:
`FAMILY_TARGET_PARAMETERS`; `[]` adapts attention only). DoRA, PiSSA and
dropout do not work on fused parameters in peft and are refused at config
time when any are targeted. A name that matches nothing fails at config time, listing the
modules (or parameters) the model has.

Trainable parameters: r·(d_in + d_out) per adapted matrix (rank-r A and B);
DoRA adds d_out (the magnitude vector); a fused [E, d_out, d_in] parameter
gets r·E·(d_in + d_out). The saved artifact is the adapter (PiSSA's converted
to a plain rank-2r LoRA of the *original* base weights, so it applies to the
unchanged base model); `scenario.merge_adapter` saves merged full weights instead.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from effbench.techniques.peft_common import AXIS, FinetuneConfig
from effbench.techniques.registry import TechniqueSpec, register

if TYPE_CHECKING:
    import torch

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# config.model_type -> modules adapted by default (those the model has; an explicit list must all match)
FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "effbench_nsa")},
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),  # experts: FAMILY_TARGET_PARAMETERS
    "qwen2_moe": _LLAMA_LIKE,  # the shared expert's projections; routed experts: FAMILY_TARGET_PARAMETERS
    "qwen3_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "deepseek_v3": ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", *_LLAMA_LIKE[4:]),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "falcon": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "mamba2": ("in_proj", "out_proj"),
    "rwkv": ("key", "value", "receptance", "output"),
}
# fused 3-D expert weights ([experts, d_out, d_in]) adapted by default
FAMILY_TARGET_PARAMETERS: dict[str, tuple[str, ...]] = {
    t: ("mlp.experts.gate_up_proj", "mlp.experts.down_proj") for t in ("mixtral", "qwen2_moe", "qwen3_moe")
}
_PISSA_INIT = re.compile(r"^pissa(_niter_[1-9]\d*)?$")


@dataclass
class LoraFamilyConfig(FinetuneConfig):
    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # peft's default; fused parameters (MoE experts) need 0
    target_modules: Optional[list[str]] = None  # None: the family's (FAMILY_TARGETS), else all-linear
    target_parameters: Optional[list[str]] = None  # fused 3-D weights; None: the family's; []: none


@dataclass
class LoraTechConfig(LoraFamilyConfig):
    method: str = "lora"


@dataclass
class RsLoraConfig(LoraFamilyConfig):
    method: str = "rslora"


@dataclass
class DoraConfig(LoraFamilyConfig):
    method: str = "dora"


@dataclass
class PissaConfig(LoraFamilyConfig):
    method: str = "pissa"
    init: str = "pissa"  # pissa (full SVD) | pissa_niter_<n> (randomized SVD, n subspace iterations: fast)


@dataclass
class LoraPlusConfig(LoraFamilyConfig):
    method: str = "loraplus"
    loraplus_lr_ratio: float = 16.0  # lr of B / lr of A (the LoRA+ paper: 2^4)
    loraplus_lr_embedding: float = 1e-6  # lr of adapters on embedding layers, if any are targeted


def _adaptable(module: torch.nn.Module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D))


def _matches(name: str, target: str) -> bool:
    """peft's rule for a list of names: the full name, or its dotted suffix."""
    return name == target or name.endswith("." + target)


def resolve_targets(model: torch.nn.Module, cfg: LoraFamilyConfig) -> tuple[list[str] | str, list[str]]:
    """(target_modules, target_parameters) for this model; ValueError naming what the model has."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    modules = [n for n, m in model.named_modules() if _adaptable(m)]
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in modules})
    if cfg.target_modules is None:
        family = FAMILY_TARGETS.get(model_type)
        targets: list[str] | str = "all-linear"
        if family:
            targets = [t for t in family if any(_matches(n, t) for n in modules)]
    else:
        targets = list(cfg.target_modules)
        missing = [t for t in targets if not any(_matches(n, t) for n in modules)]
        if missing:
            raise ValueError(f"technique.target_modules: {', '.join(map(repr, missing))} matches no module of "
                             f"{type(model).__name__}; the modules it has (linear/embedding): {', '.join(leaf_names)}")
    params = dict(model.named_parameters())
    if cfg.target_parameters is None:
        wanted = FAMILY_TARGET_PARAMETERS.get(model_type, ())
        tparams = [t for t in wanted if any(_matches(n, t) for n in params)]
    else:
        tparams = list(cfg.target_parameters)
        missing = [t for t in tparams if not any(_matches(n, t) for n in params)]
        if missing:
            fused = sorted({re.sub(r"^.*?\.\d+\.", "", n) for n, p in params.items() if p.dim() >= 3}) or ["(none)"]
            raise ValueError(f"technique.target_parameters: {', '.join(map(repr, missing))} matches no parameter of "
                             f"{type(model).__name__}; its fused (3-D) parameters: {', '.join(fused)}")
    if not targets and not tparams:
        raise ValueError(f"technique.target_modules: nothing to adapt in {type(model).__name__}; "
                         f"the modules it has (linear/embedding): {', '.join(leaf_names)}")
    if tparams and cfg.method in ("dora", "pissa"):
        raise ValueError(f"technique {cfg.method!r} cannot adapt fused parameters ({', '.join(tparams)}): peft "
                         "supports only plain LoRA on target_parameters (MoE experts); set "
                         "technique.target_parameters=[] to adapt the other modules only")
    if tparams and cfg.dropout:
        raise ValueError(f"technique.dropout={cfg.dropout}: peft cannot apply dropout to fused parameters "
                         f"({', '.join(tparams)}); set technique.dropout=0, or technique.target_parameters=[] to "
                         "adapt the other modules only")
    return targets, tparams


def peft_config(model: torch.nn.Module, cfg: LoraFamilyConfig, init: Any = None):
    from peft import LoraConfig

    if cfg.r < 1:
        raise ValueError(f"technique.r={cfg.r} must be ≥ 1")
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"technique.dropout={cfg.dropout} must be in [0, 1)")
    if isinstance(cfg, PissaConfig) and not _PISSA_INIT.match(cfg.init):
        raise ValueError(f"technique.init={cfg.init!r}; choose pissa or pissa_niter_<n> (e.g. pissa_niter_4)")
    targets, tparams = resolve_targets(model, cfg)
    if init is None:
        init = cfg.init if isinstance(cfg, PissaConfig) else True
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        target_parameters=tparams or None,
        use_rslora=cfg.method == "rslora",
        use_dora=cfg.method == "dora",
        init_lora_weights=init,
    )


def _check(meta_model: torch.nn.Module, cfg: LoraFamilyConfig) -> None:
    """Resolve targets and build the adapter on the meta device (PiSSA's SVD
    cannot run there: its dry run uses the default init)."""
    from peft import get_peft_model

    pc = peft_config(meta_model, cfg, init=True)
    try:
        get_peft_model(meta_model, pc)
    except (ValueError, TypeError, AttributeError, NotImplementedError) as e:
        raise ValueError(f"technique {cfg.name or cfg.method}: peft cannot adapt {type(meta_model).__name__}: "
                         f"{e}") from e


def _apply(model: torch.nn.Module, cfg: LoraFamilyConfig, device: torch.device) -> torch.nn.Module:
    from peft import get_peft_model

    model = get_peft_model(model.to(device), peft_config(model, cfg))
    if isinstance(cfg, PissaConfig):
        # Keep the step-0 adapter: at save time peft turns A, B (of the residual
        # base) into a plain LoRA of the original base from it.
        model.peft_config["default"].init_lora_weights = True  # reloading it must not run the SVD again
        model._effbench_pissa_init = tempfile.TemporaryDirectory(prefix="effbench-pissa-init-")
        model.save_pretrained(model._effbench_pissa_init.name)
    return model


class _PissaConverted:
    """What the artifact saves for an unmerged PiSSA model."""

    def __init__(self, model, init_dir: str):
        self.model, self.init_dir = model, init_dir

    def save_pretrained(self, path, **kw):
        self.model.save_pretrained(path, path_initial_model_for_weight_conversion=self.init_dir, **kw)


def _export_pissa(model: torch.nn.Module, cfg: PissaConfig) -> Any:
    init = getattr(model, "_effbench_pissa_init", None)
    return _PissaConverted(model, init.name) if init is not None else model  # merged: full weights


def _loraplus_optimizer(model: torch.nn.Module, cfg: LoraPlusConfig, lr: float, weight_decay: float):
    import torch
    from peft.optimizers import create_loraplus_optimizer

    if cfg.loraplus_lr_ratio < 1:
        raise ValueError(f"technique.loraplus_lr_ratio={cfg.loraplus_lr_ratio} must be ≥ 1")
    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=cfg.loraplus_lr_ratio,
                                     loraplus_lr_embedding=cfg.loraplus_lr_embedding,
                                     loraplus_weight_decay=weight_decay)


for _schema, _extra in ((LoraTechConfig, {}), (RsLoraConfig, {}), (DoraConfig, {}),
                        (PissaConfig, {"export": _export_pissa}),
                        (LoraPlusConfig, {"optimizer": _loraplus_optimizer})):
    register(TechniqueSpec(method=_schema.method, axis=AXIS, schema=_schema, apply=_apply, check=_check, **_extra))

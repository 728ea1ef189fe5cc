"""Counted FLOPs (docs/spec.md §2 `compute.flops`): torch.utils.flop_counter, plus what it cannot see.

Convention: *model* FLOPs, the numerator of MFU (as in PaLM's MFU).
- A matmul of m×k by k×n is 2·m·n·k (the counter's own formulas).
- Attention (SDPA) counts the (query, key) pairs its mask leaves: all s_q·s_k
  pairs without a mask, and for `is_causal` the lower triangle with top-left
  alignment (torch's `is_causal`): s(s+1)/2 pairs per head when s_q = s_k, the
  causal half, which is what a flash kernel computes up to the blocks on the
  diagonal. An explicit `attn_mask` is counted in full (the kernel computes every
  block and masks). The backward is 2× the forward (dQ, dK, dV, dP); the score
  recompute of flash backward kernels is not model work and is left out.
- Quantized linear layers (bitsandbytes Linear4bit / Linear8bitLt, optimum-quanto
  QLinear, HQQLinear, torchao weights as tensor subclasses, GPTQ/AWQ layers) run
  custom kernels the counter does not see, or see only in part (an outlier
  matmul, a dequantize-then-mm path on prefill but not on decode). Each such
  layer is counted at the module level instead: 2·in·out per token forward and,
  when a gradient flows to its input, 2·in·out per token backward (its weights
  are frozen: no weight gradient). Whatever the counter saw inside the layer is
  replaced, not added, so nothing is counted twice.
- A quantized layer whose work cannot be counted (a quantized module that is not
  a linear layer) makes the whole count None: none stored rather than a wrong one.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn.modules import module as nn_module
from torch.utils import flop_counter

from effbench.metrics.compression import QUANT_PACKAGES

_aten = torch.ops.aten

CONVENTION = ("model FLOPs: matmuls 2·m·n·k; attention over the (query, key) pairs its mask leaves "
              "(causal: s(s+1)/2 per head), backward 2× forward without the kernels' score recompute")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call; None where they could not be counted, and `note` says why."""

    flops: int | None
    note: str

    def times(self, n: int) -> FlopCount:
        """The count of n such calls (None stays None)."""
        return FlopCount(None if self.flops is None else self.flops * n, self.note)


def causal_pairs(s_q: int, s_k: int) -> int:
    """(query, key) pairs an `is_causal` mask leaves: query i sees keys 0..i (top-left aligned)."""
    if s_q <= s_k:
        return s_q * (s_q + 1) // 2
    return s_k * (s_k + 1) // 2 + (s_q - s_k) * s_k


def attention_flops(batch: int, heads: int, s_q: int, s_k: int, d_qk: int, d_v: int, causal: bool) -> int:
    """Forward FLOPs of softmax(QKᵀ)V over the pairs the mask leaves: QKᵀ (d_qk) and PV (d_v)."""
    pairs = causal_pairs(s_q, s_k) if causal else s_q * s_k
    return 2 * batch * heads * pairs * (d_qk + d_v)


def _sdpa_formula(op: torch._ops.OpOverloadPacket, backward: bool) -> Callable[..., int]:
    """A flop formula for one SDPA kernel op, reading its arguments by their schema names."""
    schema = op.default._schema.arguments
    names = [a.name for a in schema]
    causal_default = next((bool(a.default_value) for a in schema if a.name == "is_causal"), False)

    def formula(*args, out_shape=None, **kwargs) -> int:
        bound = {**dict(zip(names, args)), **kwargs}
        b, h_q, s_q, d_qk = bound["query"]
        s_k, d_v = bound["key"][2], bound["value"][3]
        forward = attention_flops(b, h_q, s_q, s_k, d_qk, d_v, bool(bound.get("is_causal", causal_default)))
        return 2 * forward if backward else forward

    return formula


def _grouped_mm(a, b, *args, out_shape=None, **kwargs) -> int:
    """`_grouped_mm`, which transformers' fused MoE experts use forward and backward
    (the counter counts 0 for it: without this, MoE FLOPs miss the experts)."""
    if len(a) == 2 and len(b) == 2:
        # Groups split the shared K dimension (weight gradients): M × N per group, K summed.
        return 2 * a[0] * a[1] * b[1]
    # Each output element is one K-long dot product (2-D × 3-D with offsets, or batched 3-D × 3-D).
    out = 1
    for d in out_shape:
        out *= d
    return 2 * out * a[-1]


def _formulas() -> dict:
    """Our formulas, passed to each FlopCounterMode (the global registry is left alone).
    They replace the counter's SDPA ones, which count every pair and include the recompute."""
    sdpa = {
        "_scaled_dot_product_flash_attention_for_cpu": False,  # counted 0 by the counter
        "_scaled_dot_product_flash_attention_for_cpu_backward": True,
        "_scaled_dot_product_flash_attention": False,
        "_scaled_dot_product_flash_attention_backward": True,
        "_scaled_dot_product_efficient_attention": False,
        "_scaled_dot_product_efficient_attention_backward": True,
        "_scaled_dot_product_cudnn_attention": False,
        "_scaled_dot_product_cudnn_attention_backward": True,
    }
    out = {getattr(_aten, name): _sdpa_formula(getattr(_aten, name), backward)
           for name, backward in sdpa.items() if hasattr(_aten, name)}
    if hasattr(_aten, "_grouped_mm"):
        out[_aten._grouped_mm] = _grouped_mm
    return out


_FORMULAS = _formulas()


def _is_quantized_linear(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    if isinstance(module, torch.nn.Linear) and isinstance(weight, torch.Tensor) and \
            type(weight) not in (torch.Tensor, torch.nn.Parameter):
        # torchao (and frozen quanto) weights are tensor subclasses with their own kernels;
        # bitsandbytes' Params4bit / Int8Params too.
        return True
    return _from_quant_package(module) and hasattr(module, "in_features") and hasattr(module, "out_features")


def _label(module: torch.nn.Module) -> str:
    """Layer type for the note; a plain Linear is named with its weight's tensor subclass."""
    name = type(module).__name__
    return f"{name}[{type(module.weight).__name__}]" if type(module) is torch.nn.Linear else name


def _from_quant_package(module: torch.nn.Module) -> bool:
    return type(module).__module__.split(".")[0] in QUANT_PACKAGES


def _uncountable(module: torch.nn.Module) -> bool:
    """A quantized layer with weights that is neither a linear nor an embedding (no matmul)."""
    return (_from_quant_package(module) and getattr(module, "weight", None) is not None
            and not isinstance(module, torch.nn.Embedding) and not _is_quantized_linear(module))


class _Mark(torch.autograd.Function):
    """Identity whose backward calls `on_backward`: marks where a layer's backward
    starts (gradient of its output) or ends (gradient of its input) in the graph.
    The tensor is returned as it is, as torch's own module backward hooks do."""

    @staticmethod
    def forward(ctx, on_backward, x):
        ctx.on_backward = on_backward
        return x

    @staticmethod
    def backward(ctx, grad):
        ctx.on_backward()
        return None, grad


@dataclass
class _Call:
    module: torch.nn.Module
    flops: int  # 2·in·out·tokens of this call
    counted_at_entry: int  # the counter's total when the forward (or backward) started
    backward: _Call | None = None  # the same layer's backward, when a gradient will flow to its input


class _QuantizedLinears:
    """Global module hooks that count each quantized linear as 2·in·out per token and
    take out what the counter saw inside it (`correction` is added to the counter's total)."""

    def __init__(self, counter: flop_counter.FlopCounterMode):
        self.counter = counter
        self.correction = 0
        self.layers: Counter = Counter()
        self.uncountable: Counter = Counter()
        self._open: list[_Call] = []  # the quantized linear inside its forward (at most one: they don't nest)

    def pre(self, module, args):
        if _uncountable(module):
            self.uncountable[type(module).__name__] += 1
        if self._open or not _is_quantized_linear(module):
            return None
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None:  # called with keywords only: no token count
            self.uncountable[f"{type(module).__name__} (called with keywords only)"] += 1
            return None
        tokens = x.numel() // module.in_features
        call = _Call(module, 2 * module.in_features * module.out_features * tokens, self.counter.get_total_flops())
        self._open.append(call)
        if torch.is_grad_enabled() and x.requires_grad:
            # Backward: the gradient of the input only (quantized weights are frozen). It
            # starts when the output's gradient arrives and ends when the input's is computed.
            call.backward = backward = _Call(module, call.flops, 0)
            return (_Mark.apply(lambda: self._replace(backward), x), *args[1:])
        return None

    def post(self, module, args, output):
        if not self._open or self._open[-1].module is not module:
            return None
        call = self._open.pop()
        self._replace(call)
        self.layers[_label(module)] += 1
        backward = call.backward
        if backward is not None and isinstance(output, torch.Tensor) and output.requires_grad:

            def start() -> None:
                backward.counted_at_entry = self.counter.get_total_flops()

            return _Mark.apply(start, output)
        return None

    def _replace(self, call: _Call) -> None:
        self.correction += call.flops - (self.counter.get_total_flops() - call.counted_at_entry)

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        pre = nn_module.register_module_forward_pre_hook(self.pre)
        post = nn_module.register_module_forward_hook(self.post)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """FLOPs of one call of `fn` (forward, backward or a whole `generate`), counted
    op by op under the convention above (not timed: the counter slows ops)."""
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_FORMULAS)
    quantized = _QuantizedLinears(counter)
    with counter, quantized.hooked():
        fn()
    note = f"torch.utils.flop_counter; {CONVENTION}"
    if quantized.uncountable:
        kinds = ", ".join(f"{n}×{c}" for n, c in sorted(quantized.uncountable.items()))
        return FlopCount(None, f"not counted: quantized layers {kinds} run kernels the FLOP counter does not "
                               "see and are not linear layers whose work could be counted from their shape")
    if quantized.layers:
        kinds = ", ".join(f"{n}×{c}" for n, c in sorted(quantized.layers.items()))
        note += (f"; quantized linear layer calls {kinds} counted at the module level as 2·in·out per token "
                 "(+ the same for the input gradient in a backward), replacing what the counter saw inside them")
    return FlopCount(counter.get_total_flops() + quantized.correction, note)

"""Counted FLOPs against analytic counts: causal attention, the backward without
recompute, whole forwards and generates at fp32 / bf16 / fp16, and quantized
linear layers whose kernels the counter does not see (the techniques themselves
are checked in tests/test_quantization.py)."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from effbench.config.schema import BuiltinModelConfig
from effbench.metrics.flops import attention_flops, causal_pairs, count_flops
from effbench.models import load_model

HIDDEN, LAYERS, HEADS, FFN = 256, 2, 4, 1024  # widths the 4-bit formats' block sizes divide
HEAD_DIM = HIDDEN // HEADS


def tiny_model(dtype=torch.float32):
    cfg = BuiltinModelConfig(name="flops", hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
                             intermediate_size=FFN)
    return load_model(cfg).model.to(dtype).eval()


def linear_weights(model) -> int:
    """in·out summed over every linear layer of the (unquantized) model."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def analytic_forward(linear: int, batch: int, seq: int) -> int:
    """2·N·tokens for the linear layers plus causal attention: QKᵀ and PV over s(s+1)/2 pairs per head."""
    causal = 2 * 2 * batch * HEADS * HEAD_DIM * seq * (seq + 1) // 2
    return 2 * linear * batch * seq + LAYERS * causal


def analytic_generate(linear: int, head: int, batch: int, prompt: int, new: int) -> int:
    """Prefill (causal, logits of the last position only), then new − 1 decode steps of one
    query against every cached key; `head` = in·out of lm_head."""
    body = linear - head
    prefill = 2 * body * batch * prompt + 2 * head * batch + LAYERS * 2 * 2 * batch * HEADS * HEAD_DIM * (
        prompt * (prompt + 1) // 2)
    decode = sum(2 * linear * batch + LAYERS * 2 * 2 * batch * HEADS * HEAD_DIM * (prompt + t) for t in range(1, new))
    return prefill + decode


def test_causal_pairs_are_the_lower_triangle():
    for s_q, s_k in ((1, 1), (5, 5), (3, 7), (7, 3), (1, 9)):
        mask = torch.ones(s_q, s_k, dtype=torch.bool).tril()  # torch's is_causal: top-left aligned
        assert causal_pairs(s_q, s_k) == int(mask.sum())


def test_sdpa_counts_the_pairs_its_mask_leaves():
    q = torch.randn(1, 4, 64, 32)
    full = 2 * 2 * 4 * 64 * 64 * 32
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)).flops == full
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)).flops == \
        2 * 2 * 4 * 32 * (64 * 65 // 2)
    # An explicit mask is computed in full by the kernel, then applied.
    mask = torch.ones(64, 64, dtype=torch.bool).tril()
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask)).flops == full


def test_sdpa_backward_is_twice_the_forward_without_recompute():
    q = torch.randn(1, 4, 64, 32, requires_grad=True)
    forward = attention_flops(1, 4, 64, 64, 32, 32, causal=True)
    counted = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward())
    assert counted.flops == 3 * forward  # torch's own formula counts 3.5× (the score recompute)


def test_grouped_mm_of_moe_experts_is_counted():
    tokens, k, n, experts = 8, 8, 4, 2  # grouped_mm wants 16-byte-aligned strides
    a, b = torch.randn(tokens, k), torch.randn(experts, k, n)
    offs = torch.tensor([2, tokens], dtype=torch.int32)  # rows 0-1 → expert 0, rows 2-7 → expert 1
    assert count_flops(lambda: torch._grouped_mm(a, b, offs=offs)).flops == 2 * tokens * k * n
    # Weight-gradient form: K split into groups, one M × N output per group.
    x, g = torch.randn(k, tokens), torch.randn(tokens, n)
    assert count_flops(lambda: torch._grouped_mm(x, g, offs=offs)).flops == 2 * k * tokens * n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_forward_and_generate_match_the_analytic_count(dtype):
    model = tiny_model(dtype)
    linear, head = linear_weights(model), model.lm_head.in_features * model.lm_head.out_features
    x = torch.randint(3, 256, (2, 32))
    with torch.inference_mode():
        forward = count_flops(lambda: model(input_ids=x))
        generate = count_flops(lambda: model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6,
                                                      min_new_tokens=6, do_sample=False, pad_token_id=0))
    assert forward.flops == pytest.approx(analytic_forward(linear, 2, 32), rel=1e-6)
    assert generate.flops == pytest.approx(analytic_generate(linear, head, 2, 32, 6), rel=1e-6)
    assert "causal" in forward.note


def test_training_step_is_three_forwards():
    """Every weight trains: forward 2·N, backward 4·N (input and weight gradients) per
    token; attention backward 2× its forward."""
    model = tiny_model().train()
    x = torch.randint(3, 256, (2, 32))
    counted = count_flops(lambda: model(input_ids=x, labels=x).loss.backward())
    assert counted.flops == pytest.approx(3 * analytic_forward(linear_weights(model), 2, 32), rel=1e-6)


class _NumpyMatmul(torch.autograd.Function):
    """A matmul the FLOP counter cannot see (computed in numpy), forward and backward."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return torch.from_numpy(np.asarray(x.detach().numpy() @ weight.numpy().T))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return torch.from_numpy(np.asarray(grad.numpy() @ weight.numpy())), None


class HiddenKernelLinear(torch.nn.Module):
    """Stands in for a quantized linear layer of a quantization package (its class is
    placed in `bitsandbytes.…`): frozen weights, kernels invisible to the counter."""

    def __init__(self, in_features, out_features, mm_seen_too=False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.randn(out_features, in_features))
        self.mm_seen_too = mm_seen_too  # also run a visible dequantize-then-mm, as some paths do

    def forward(self, x):
        out = _NumpyMatmul.apply(x, self.packed)
        if self.mm_seen_too:
            out = out + 0 * (x @ self.packed.t())
        return out


HiddenKernelLinear.__module__ = "bitsandbytes.nn.fake"


@pytest.mark.parametrize("mm_seen_too", [False, True])
def test_quantized_layer_counts_once_forward_and_backward(mm_seen_too):
    layer = HiddenKernelLinear(64, 48, mm_seen_too)
    x = torch.randn(3, 5, 64, requires_grad=True)
    per_pass = 2 * 64 * 48 * 15
    forward = count_flops(lambda: layer(x))
    assert forward.flops == per_pass and "HiddenKernelLinear×1" in forward.note
    # Backward: the input's gradient only (the quantized weights are frozen).
    assert count_flops(lambda: layer(x).sum().backward()).flops == 2 * per_pass
    with torch.no_grad():
        assert count_flops(lambda: layer(x)).flops == per_pass


def test_a_quantized_layer_that_is_not_linear_is_not_counted():
    class QuantizedConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3), requires_grad=False)

        def forward(self, x):
            return F.conv2d(x, self.weight)

    QuantizedConv.__module__ = "optimum.quanto.nn.fake"
    result = count_flops(lambda: QuantizedConv()(torch.randn(1, 3, 8, 8)))
    assert result.flops is None
    assert "QuantizedConv×1" in result.note and "not counted" in result.note


def test_moe_training_flops_match_the_dense_model_of_equal_active_width(tiny_cfg):
    """Top-2 of 8 experts each 1/2 the dense FFN width: per token the same FFN FLOPs as the
    dense model (plus the router), so the counted totals agree closely."""
    from dataclasses import replace

    from effbench.models import parameter_counts

    x = torch.randint(3, 256, (2, 32))
    counted, flop_n = {}, {}
    for arch, opts in (("llama", {}), ("mixtral", {"num_experts": 8, "top_k": 2})):
        # The sweep's tiny width (expert 344 = 688 / 2): grouped_mm needs 16-byte-aligned strides.
        model = load_model(replace(tiny_cfg, arch=arch, arch_options=opts, hidden_size=256, num_heads=8,
                                   num_layers=1, intermediate_size=688)).model
        counted[arch] = count_flops(lambda: model(input_ids=x, labels=x).loss.backward()).flops
        flop_n[arch] = parameter_counts(model)["active_non_embedding"]
    assert counted["mixtral"] == pytest.approx(counted["llama"], rel=0.05)
    # The N of the 6·N·tokens rule counts the two active experts only, as the counter does.
    assert flop_n["mixtral"] == pytest.approx(flop_n["llama"], rel=0.01)

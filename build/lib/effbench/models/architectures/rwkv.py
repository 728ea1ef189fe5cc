"""Attention-free: RWKV (v4, transformers' `RwkvForCausalLM`): time-mixing
(a linear-attention recurrence) and channel-mixing per layer; no KV cache, a
constant per-sequence state.

Sized to the preset: attention width = hidden (4·d² in R/K/V/O, as a
transformer's attention), channel-mix width F from 2·d·F + d² = 3·d·I (the
preset's SwiGLU), i.e. F = (3·I − d) / 2 (904 at the tiny preset): within 1%
of the Llama preset. `rescale_every` is 0: transformers' RWKV otherwise
rescales weights *in place* whenever it runs in eval mode.

On CPU transformers runs the recurrence as a Python loop over time steps (the
CUDA kernel needs a GPU), so prefill and training are slow per token.

transformers (5.24) bug, patched here: with a state and a one-token input
(every decode step of `generate`), the token-shift state is taken as
[batch, hidden] and broadcast against [batch, 1, hidden] into
[batch, batch, hidden], so batched decoding mixes sequences (batch 1 is
unaffected). `_patch_batched_decode` fixes the two methods while the buggy line
is present in the installed transformers, and leaves a fixed one alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import inspect

import torch
from transformers import RwkvConfig, RwkvForCausalLM
from transformers.models.rwkv import modeling_rwkv

from effbench.models.architectures.base import SPECIAL_TOKENS, Architecture, register, require_positive


def _attention_extract_key_value(self, hidden, state=None):
    # transformers' RwkvSelfAttention.extract_key_value, with the one-token shift kept 3-D.
    if hidden.size(1) == 1 and state is not None:
        shifted = state[1][:, :, self.layer_id].unsqueeze(1)
    else:
        shifted = self.time_shift(hidden)
        if state is not None:
            shifted[:, 0] = state[1][:, :, self.layer_id]
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    value = hidden * self.time_mix_value + shifted * (1 - self.time_mix_value)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    key = self.key(key)
    value = self.value(value)
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[1][:, :, self.layer_id] = hidden[:, -1]
    return receptance, key, value, state


def _feed_forward(self, hidden, state=None):
    # transformers' RwkvFeedForward.forward, with the one-token shift kept 3-D.
    if hidden.size(1) == 1 and state is not None:
        shifted = state[0][:, :, self.layer_id].unsqueeze(1)
    else:
        shifted = self.time_shift(hidden)
        if state is not None:
            shifted[:, 0] = state[0][:, :, self.layer_id]
    key = hidden * self.time_mix_key + shifted * (1 - self.time_mix_key)
    receptance = hidden * self.time_mix_receptance + shifted * (1 - self.time_mix_receptance)
    key = torch.square(torch.relu(self.key(key)))
    value = self.value(key)
    receptance = torch.sigmoid(self.receptance(receptance))
    if state is not None:
        state[0][:, :, self.layer_id] = hidden[:, -1]
    return receptance * value, state


def _patch_batched_decode() -> None:
    targets = [(modeling_rwkv.RwkvSelfAttention, "extract_key_value", "state[1]", _attention_extract_key_value),
               (modeling_rwkv.RwkvFeedForward, "forward", "state[0]", _feed_forward)]
    for cls, name, slot, fixed in targets:
        buggy = f"shifted = {slot}[:, :, self.layer_id]\n"
        if buggy in inspect.getsource(getattr(cls, name)):
            setattr(cls, name, fixed)


_patch_batched_decode()


@dataclass
class RwkvOptions:
    ffn_size: Optional[int] = None  # channel-mix width; None: (3·intermediate_size − hidden) / 2


def build(cfg, opts: RwkvOptions, vocab_size: int) -> RwkvForCausalLM:
    ffn = opts.ffn_size or max(1, (3 * cfg.intermediate_size - cfg.hidden_size) // 2)
    require_positive("model.arch_options.ffn_size", ffn)
    return RwkvForCausalLM(RwkvConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        attention_hidden_size=cfg.hidden_size,  # transformers' state buffers assume it
        intermediate_size=ffn,
        context_length=cfg.max_position,
        rescale_every=0,
        tie_word_embeddings=False,
        **SPECIAL_TOKENS,
    ))


def kv_bytes(model, dtype_bytes: int) -> int:
    return 0


def state_bytes(model, dtype_bytes: int) -> int:
    """Five hidden-sized vectors per layer: two token-shift states in the model
    dtype and the numerator/denominator/max of the WKV recurrence, which
    transformers always keeps in float32."""
    c = model.config
    return c.num_hidden_layers * c.hidden_size * (2 * dtype_bytes + 3 * 4)


register(Architecture("rwkv", RwkvOptions, build,
                      "RWKV-4: attention-free time/channel mixing, constant recurrent state",
                      kv_bytes_per_token=kv_bytes, state_bytes=state_bytes))

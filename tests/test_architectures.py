"""Architecture families and the architecture technique configs: every variant
builds, trains on real text, round-trips through save/load and generates; the
size and KV-cache arithmetic holds; bad options fail naming the key."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from effbench.config.schema import BuiltinModelConfig
from effbench.models import load_model, parameter_counts
from effbench.models.architectures import (ARCHITECTURES, ArchitectureError, active_parameters,
                                           kv_cache_bytes_per_token, recurrent_state_bytes)
from effbench.techniques import get_technique
from effbench.techniques.architecture import ArchitectureConfig

TECHNIQUE_DIR = Path(__file__).resolve().parents[1] / "configs" / "technique"
ARCH_SCHEMA = "/schema/technique/architecture@_here_"

# Small enough to train in seconds on 2 cores (FFN 176: the MoE's expert width 176 / top_k = 88 is a
# multiple of 8, as grouped_mm needs); the default BuiltinModelConfig is the tiny preset.
SMALL = BuiltinModelConfig(name="small", hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176,
                           max_position=256)
TINY = BuiltinModelConfig(name="tiny")


def _architecture_techniques() -> dict[str, ArchitectureConfig]:
    out = {}
    for path in sorted(TECHNIQUE_DIR.glob("*.yaml")):
        raw = OmegaConf.load(path)
        if ARCH_SCHEMA not in list(raw.get("defaults", [])):
            continue
        del raw["defaults"]
        # Typed merge: a wrong key or type in the YAML fails here, as it would in Hydra.
        cfg = OmegaConf.merge(OmegaConf.structured(ArchitectureConfig), raw)
        out[path.stem] = OmegaConf.to_object(cfg)
    return out


TECHNIQUES = _architecture_techniques()
NAMES = sorted(TECHNIQUES)
EXPECTED = {"mha", "gqa", "mqa", "mla", "nsa", "moe-top2", "dense-equal-active", "dense-equal-total", "pos-rope",
            "pos-learned", "pos-sinusoidal", "pos-alibi", "mamba2", "rwkv", "pythia"}


def model_cfg(name: str, size: BuiltinModelConfig = SMALL, **options) -> BuiltinModelConfig:
    cfg = get_technique("architecture").configure_model(size, TECHNIQUES[name])
    return replace(cfg, arch_options={**cfg.arch_options, **options}) if options else cfg


def build(name: str, size: BuiltinModelConfig = SMALL, **options) -> torch.nn.Module:
    return load_model(model_cfg(name, size, **options)).model


def total(model) -> int:
    return parameter_counts(model)["total"]


@pytest.fixture(scope="module")
def text_ids() -> torch.Tensor:
    from effbench.data import load_corpus
    from effbench.models.zoo import TOKENIZERS

    tok = TOKENIZERS["byte"]()
    text = load_corpus("pydoc").train_text[:60_000]
    return torch.tensor(tok(text, add_special_tokens=False).input_ids)


def batches(ids: torch.Tensor, n: int, batch: int = 4, seq: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        starts = torch.randint(0, len(ids) - seq, (batch,), generator=g)
        yield torch.stack([ids[s : s + seq] for s in starts])


def test_every_listed_variant_has_a_config():
    assert EXPECTED <= set(TECHNIQUES), f"missing technique configs: {EXPECTED - set(TECHNIQUES)}"
    for name, cfg in TECHNIQUES.items():
        assert cfg.name == name and cfg.arch in ARCHITECTURES, name


@pytest.mark.parametrize("name", NAMES)
def test_variant_trains_on_real_text(name, text_ids):
    model = build(name).train()
    held_out = next(batches(text_ids, 1, seed=123))

    def eval_loss() -> float:
        with torch.no_grad():
            return model(input_ids=held_out, labels=held_out).loss.item()

    before = eval_loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for x in batches(text_ids, 12, batch=4):
        out = model(input_ids=x, labels=x)
        assert out.logits.shape == (*x.shape, model.config.vocab_size)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = eval_loss()
    assert after < before - 0.5, f"{name}: held-out loss {before:.3f} → {after:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_save_and_reload_give_the_same_logits(name, tmp_path):
    model = build(name).eval()
    x = torch.randint(3, 259, (2, 40), generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    assert [(n, p.requires_grad) for n, p in again.named_parameters()] == \
        [(n, p.requires_grad) for n, p in model.named_parameters()]
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cached_generation_matches_the_full_forward(name):
    model = build(name).eval()
    prompt = torch.randint(3, 259, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                             min_new_tokens=10, do_sample=False, pad_token_id=0)
        assert out.shape == (2, 34)
        # Greedy tokens decoded through the cache are the argmax of one uncached forward.
        logits = model(input_ids=out, use_cache=False).logits
    torch.testing.assert_close(logits[:, 23:-1].argmax(-1), out[:, 24:], rtol=0, atol=0)


def llama_parameters(cfg: BuiltinModelConfig, vocab: int, kv_heads: int, ffn: int) -> int:
    d, layers, head_dim = cfg.hidden_size, cfg.num_layers, cfg.hidden_size // cfg.num_heads
    attention = 2 * d * d + 2 * d * kv_heads * head_dim  # q, o full; k, v per KV head
    per_layer = attention + 3 * d * ffn + 2 * d  # SwiGLU + two RMSNorms
    return 2 * vocab * d + layers * per_layer + d  # untied embedding and head, final norm


@pytest.mark.parametrize("name,kv_heads", [("mha", 4), ("gqa", 2), ("mqa", 1)])
def test_kv_heads_shrink_k_and_v_exactly(name, kv_heads):
    model = build(name)
    assert total(model) == llama_parameters(SMALL, model.config.vocab_size, kv_heads, SMALL.intermediate_size)
    d, layers = SMALL.hidden_size, SMALL.num_layers
    saved = 2 * layers * d * (d - d * kv_heads // SMALL.num_heads)  # K and V: d×d → d×(d·kv/heads)
    assert total(build("mha")) - total(model) == saved


def test_moe_matches_dense_active_and_total_up_to_the_router():
    moe, active, dense_total = build("moe-top2"), build("dense-equal-active"), build("dense-equal-total")
    c = moe.config
    router = SMALL.num_layers * SMALL.hidden_size * c.num_local_experts  # hidden × experts per layer
    assert total(moe) > total(active)
    assert active_parameters(active) == total(active)  # dense: all parameters active
    # Active: the same attention/embeddings and top_k experts of width intermediate/top_k = the dense FFN;
    # the only difference is the router.
    assert active_parameters(moe) - total(active) == router
    assert abs(active_parameters(moe) / total(active) - 1) <= 0.02
    # Total: num_experts × (intermediate/top_k) = ffn_multiplier × intermediate, again up to the router.
    assert total(moe) - total(dense_total) == router


def test_moe_loss_includes_the_router_aux_loss():
    x = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(2))
    with_aux = build("moe-top2").train()
    without = build("moe-top2", router_aux_loss_coef=0.0).train()
    assert with_aux.config.output_router_logits and with_aux.config.router_aux_loss_coef == 0.01
    out, base = with_aux(input_ids=x, labels=x), without(input_ids=x, labels=x)
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    torch.testing.assert_close(out.loss - base.loss, 0.01 * out.aux_loss)
    out.loss.backward()
    assert with_aux.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0  # the router learns


def test_sinusoidal_positions_stay_fixed(text_ids, tmp_path):
    from effbench.models.architectures.gpt2 import sinusoidal_table

    model = build("pos-sinusoidal").train()
    wpe = model.transformer.wpe.weight
    table = sinusoidal_table(SMALL.max_position, SMALL.hidden_size)
    assert not wpe.requires_grad and torch.equal(wpe, table)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for x in batches(text_ids, 3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(model.transformer.wpe.weight, table)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not again.transformer.wpe.weight.requires_grad
    assert torch.equal(again.transformer.wpe.weight, table)
    # The learned variant trains its table.
    learned = build("pos-learned")
    assert learned.transformer.wpe.weight.requires_grad and not torch.equal(learned.transformer.wpe.weight, table)


@pytest.mark.parametrize("name,options,message", [
    ("gqa", {"num_kv_heads": 3}, "num_kv_heads=3 must divide model.num_heads=4"),
    ("moe-top2", {"num_kv_heads": 3}, "num_kv_heads=3 must divide model.num_heads=4"),
    ("nsa", {"num_kv_heads": 3}, "num_kv_heads=3 must divide model.num_heads=4"),
    ("mha", {"kv_heads": 2}, "kv_heads not an option of arch 'llama'; valid: num_kv_heads, ffn_multiplier"),
    ("mla", {"kv_rank": 8}, "kv_rank not an option of arch 'deepseek_v3'; valid: kv_lora_rank"),
    ("mamba2", {"num_kv_heads": 2}, "num_kv_heads not an option of arch 'mamba2'"),
    ("pos-learned", {"position": "rope"}, "position='rope'; choose one of learned, sinusoidal"),
    ("pos-rope", {"position": "learned"}, "position='learned'; choose one of rope, alibi"),
    ("moe-top2", {"top_k": 9}, "top_k=9 must not exceed model.arch_options.num_experts=8"),
    ("moe-top2", {"expert_intermediate_size": 86}, "expert_intermediate_size=86 must be a multiple of 8"),
    ("nsa", {"selection_block_size": 6}, "compress_block_sliding_stride=4 must divide "
                                         "model.arch_options.selection_block_size=6"),
    ("mamba2", {"head_dim": 48}, "head_dim=48 must divide"),
    ("mla", {"qk_rope_head_dim": 3}, "qk_rope_head_dim=3 must be even"),
])
def test_invalid_options_name_the_key(name, options, message):
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(")):
        build(name, **options)


def test_nsa_refuses_padding():
    model = build("nsa").eval()
    x = torch.randint(3, 259, (2, 16))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with pytest.raises(ValueError, match="padded batches"):
        model(input_ids=x, attention_mask=mask)


def test_kv_cache_bytes_per_token():
    kv = {name: kv_cache_bytes_per_token(build(name, TINY), 2) for name in
          ("mha", "gqa", "mqa", "mla", "nsa", "mamba2", "rwkv", "pythia", "pos-learned", "pos-alibi")}
    layers, d = TINY.num_layers, TINY.hidden_size
    assert kv["mha"] == 2 * layers * d * 2  # K and V, all heads, 2 bytes
    assert kv["mha"] > kv["gqa"] > kv["mqa"]
    assert kv["gqa"] == kv["mha"] // 4 and kv["mqa"] == kv["mha"] // 8  # 8 heads → 2 → 1 KV heads
    assert kv["mla"] < kv["mha"]
    assert kv["mla"] == layers * (4 * d // TINY.num_heads + d // TINY.num_heads // 2) * 2  # latent + RoPE key
    assert kv["nsa"] == kv["mha"] * 5 // 4  # full K/V + one compressed K/V per 4 tokens
    assert kv["pythia"] == kv["pos-learned"] == kv["pos-alibi"] == kv["mha"]
    assert kv["mamba2"] == kv["rwkv"] == 0
    assert recurrent_state_bytes(build("mamba2", TINY), 2) > 0 and recurrent_state_bytes(build("rwkv", TINY), 2) > 0
    assert recurrent_state_bytes(build("mha", TINY), 2) == 0


def test_tiny_preset_counts():
    """The tiny preset (hidden 256, 4 layers, 8 heads, FFN 688, 1024 positions, vocab 384) is ~3.4M as Llama-MHA."""
    assert total(build("mha", TINY)) == llama_parameters(TINY, 384, 8, 688) == 3_361_024


@functools.cache
def tiny_reference() -> int:
    return total(build("mha", TINY))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_preset_budget_within_ten_percent(name):
    cfg = TECHNIQUES[name]
    if cfg.size_change_intended:
        pytest.skip(f"{name} is meant to change the budget (size_change_intended)")
    reference = tiny_reference()
    model = build(name, TINY)
    assert abs(total(model) / reference - 1) <= 0.10, f"{name}: {total(model):,} vs llama-MHA {reference:,}"


def test_active_parameters_of_an_unregistered_moe_checkpoint():
    """Hub MoE families not built here (Qwen2-MoE) get the generic formula; the shared expert stays active."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
        vocab_size=384, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=176, moe_intermediate_size=88, shared_expert_intermediate_size=176, num_experts=4,
        num_experts_per_tok=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=None, eos_token_id=1))
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert routed == 2 * 4 * 3 * 64 * 88  # layers × experts × SwiGLU(64 → 88)
    assert active_parameters(model) == total(model) - routed // 2  # 2 of 4 experts idle
    assert kv_cache_bytes_per_token(model, 2) == 2 * 2 * 64 * 2  # generic K/V formula

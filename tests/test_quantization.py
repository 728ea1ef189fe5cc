"""Quantization techniques (inference axis): honest sizes against each format's
analytic bytes, sizes that survive a save and reload, outputs and perplexity
close to fp32 on a trained checkpoint, MCR from stored runs, GPU-only skips.

One tiny Llama is trained once for the module (pretrain scenario, 32 steps of
8 × 128 bytes: held-out perplexity ≈ 19, a random one's ≈ 390):
hidden 256, intermediate 1024, 2 layers and the 384-token byte vocabulary, so
the 14 linear layers hold 91% of the fp32 bytes (embeddings, lm_head and norms
stay fp32 in every technique and are counted as such).
"""

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from effbench.config.schema import ArtifactModelConfig
from effbench.data import load_corpus
from effbench.execute import execute, prepare
from effbench.hydra_app import CONFIG_DIR
from effbench.metrics.compression import serialized_size_at, serialized_size_bytes
from effbench.metrics.flops import attention_flops, count_flops
from effbench.metrics.mcr import mcr_metrics
from effbench.metrics.memory import model_resident_bytes
from effbench.metrics.record import Status
from effbench.models import load_model
from effbench.store import open_store
from effbench.techniques import UnsupportedTechnique, get_technique
from runners.baseline import baseline_quality
from runners.generation import heldout_ids

CPU = torch.device("cpu")
TRAIN = ["scenario=pretrain", "model=tiny", "model.hidden_size=256", "model.num_layers=2", "model.num_heads=4",
         "model.intermediate_size=1024", "hardware.device=cpu", "scenario.token_budget=32768", "scenario.seq_len=128",
         "scenario.micro_batch_size=8", "scenario.eval_every=15", "scenario.warmup_steps=2",
         "scenario.eval_tokens=2048"]
FAST = ["hardware.device=cpu", "scenario.prompt_tokens=32", "scenario.output_tokens=8", "scenario.repeats=2",
        "scenario.warmup=1", "scenario.eval_max_tokens=2048", "scenario.eval_context=128"]
INT8 = ["bnb-int8", "quanto-qint8", "torchao-int8-wo", "torchao-int8-dyn"]
INT4 = ["bnb-nf4", "bnb-fp4", "quanto-qint4", "hqq-4bit"]


# Bytes one quantized nn.Linear of out×in weights takes in each format (n = out·in):
# packed weights + scales / zero points (fp32 on a CPU) + fixed per-layer state.
def _nf4(out, inp):  # 2 weights/byte, fp32 absmax per 64-block, 16-entry fp32 code book, quant-state blob
    n = out * inp
    return n // 2 + n // 64 * 4 + 16 * 4 + 80


FORMAT_BYTES = {
    "bnb-nf4": _nf4,
    "bnb-fp4": _nf4,
    "bnb-int8": lambda out, inp: out * inp + out * 4 + 1,  # int8 + fp32 row scale (SCB) + format byte
    "quanto-qint8": lambda out, inp: out * inp + out * 4 + 8,  # int8 + fp32 row scale + in/out scale scalars
    "quanto-qint4": lambda out, inp: out * inp // 2 + (out * inp // 128) * 8 + 8,  # + fp32 scale & shift per 128
    "hqq-4bit": lambda out, inp: out * inp // 2 + (out * inp // 64) * 8,  # + fp32 scale & zero per 64
    "torchao-int8-wo": lambda out, inp: out * inp + out * 4 + out,  # int8 + fp32 scale + int8 zero per row
    "torchao-int8-dyn": lambda out, inp: out * inp + out * 4 + out,
}
# Relative logit error ‖q − fp32‖ / ‖fp32‖ and perplexity ratio bounds on the trained checkpoint
# (measured here: int8 ≤ 0.001 and ≤ 1.0001; 4-bit ≤ 0.004 and ≤ 1.0005; bf16 gives 0.002).
LOGIT_ERR = {**dict.fromkeys(INT8, 0.003), **dict.fromkeys(INT4, 0.012)}
PPL_RATIO = {**dict.fromkeys(INT8, 1.001), **dict.fromkeys(INT4, 1.005)}


def compose_cfg(overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def technique_cfg(name):
    return OmegaConf.to_object(compose_cfg([f"technique={name}"])).technique


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    mp = pytest.MonkeyPatch()
    mp.setenv("EFFBENCH_ARTIFACTS", str(d / "artifacts"))
    url = f"sqlite:///{d}/s.db"
    r = execute(compose_cfg([*TRAIN, f"store.url={url}"]))
    assert r.status is Status.OK, r.error
    model_cfg = ArtifactModelConfig(run_id=r.id, store_url=url)
    loaded = load_model(model_cfg)
    ids = loaded.tokenizer(load_corpus().heldout_text, add_special_tokens=False).input_ids[:2048]
    chunks = torch.tensor(ids).view(8, 256)
    with torch.no_grad():
        logits = loaded.model(chunks).logits
    yield SimpleNamespace(dir=d, url=url, run_id=r.id, model_cfg=model_cfg, fp32=loaded.model, tok=loaded.tokenizer,
                          ids=ids, chunks=chunks, logits=logits, ppl=perplexity(logits, chunks))
    mp.undo()


def perplexity(logits, chunks):
    """exp of the mean next-token NLL over the chunks (as effbench.metrics.quality.heldout_loss)."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), chunks[:, 1:].flatten())
    return math.exp(nll.item())


@pytest.fixture(scope="module")
def quantized(trained):
    """Each CPU technique applied to a fresh copy of the checkpoint: (model, file
    size, resident bytes), sized right after `apply` (before any forward:
    bitsandbytes repacks on its first one)."""
    out = {}
    for name in INT8 + INT4:
        cfg = technique_cfg(name)
        model = get_technique(cfg.method).apply(load_model(trained.model_cfg).model, cfg, CPU)
        out[name] = (model, serialized_size_bytes(model), model_resident_bytes(model))
    return out


def expected_bytes(fp32: torch.nn.Module, name: str) -> int:
    """fp32 bytes of every tensor kept in float (a tied lm_head once), plus the format's
    bytes of each quantized linear."""
    fmt, total, seen = FORMAT_BYTES[name], 0, set()
    for mod_name, module in fp32.named_modules():
        if isinstance(module, torch.nn.Linear) and mod_name != "lm_head":
            total += fmt(*module.weight.shape)
            continue
        for p in module.parameters(recurse=False):
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * 4
    return total


@pytest.mark.parametrize("name", INT4 + INT8)
def test_compression_ratio_is_the_formats(trained, quantized, name):
    _, size, _ = quantized[name]
    fp32_bytes = serialized_size_at(trained.fp32, torch.float32)
    expected = expected_bytes(trained.fp32, name)
    # The file holds at least the format's bytes; the rest is safetensors' header
    # (names, shapes) and small per-layer metadata: under 2% here.
    assert expected <= size <= expected * 1.02
    assert fp32_bytes / size == pytest.approx(fp32_bytes / expected, rel=0.02)
    assert fp32_bytes / size > (4.3 if name in INT4 else 3.1)  # linears 91% of the bytes, the rest fp32
    assert "safetensors" in size.how


@pytest.mark.parametrize("name", INT4 + INT8)
def test_resident_bytes_are_the_formats_bytes(trained, quantized, name):
    """What the quantized model holds in memory, counted: the format's packed weights and
    scales (at least the analytic bytes), and the safetensors file less its header."""
    _, size, resident = quantized[name]
    assert expected_bytes(trained.fp32, name) <= resident <= size
    assert size - resident < 32 * 1024  # the header: tensor names, shapes, offsets
    assert model_resident_bytes(trained.fp32) / resident > (4.3 if name in INT4 else 3.1)  # as the file sizes


def analytic_flops(fp32: torch.nn.Module, batch: int, seq: int) -> int:
    """One forward of `batch` × `seq` tokens: 2·in·out per token for every linear layer (the
    quantized ones and lm_head) and causal attention, QKᵀ and PV over s(s+1)/2 pairs per head."""
    linear = sum(m.in_features * m.out_features for m in fp32.modules() if isinstance(m, torch.nn.Linear))
    cfg = fp32.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attention = attention_flops(batch, cfg.num_attention_heads, seq, seq, head_dim, head_dim, causal=True)
    return 2 * linear * batch * seq + cfg.num_hidden_layers * attention


@pytest.mark.parametrize("name", INT8 + INT4)
def test_counted_flops_of_quantized_layers_match_the_analytic_count(trained, quantized, name):
    """The issue's bnb-int8 counted 6.7 of 82 MFLOP: the counter sees none or part of the
    quantized matmuls. Counted at the module level, every technique gives the analytic
    count (exactly here; the bound asked for is 10%)."""
    model, _, _ = quantized[name]
    x = trained.chunks[:2, :64]
    with torch.inference_mode():
        counted = count_flops(lambda: model(input_ids=x))
    assert counted.flops == pytest.approx(analytic_flops(trained.fp32, 2, 64), rel=1e-6)
    assert "×14 counted at the module level" in counted.note  # the 14 quantized linears


def test_sizes_equal_a_save_and_reload(trained, quantized, tmp_path):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear
    from optimum.quanto import quantization_map, requantize
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from effbench.techniques.quant_common import replace_module

    x = torch.tensor(trained.ids[:256]).view(2, 128)

    # bitsandbytes: transformers' own save_pretrained / from_pretrained (a fresh
    # model: the fixture's may have run a forward, which repacks on a CPU).
    cfg = technique_cfg("bnb-nf4")
    bnb = get_technique(cfg.method).apply(load_model(trained.model_cfg).model, cfg, CPU)
    size = serialized_size_bytes(bnb)
    assert size == quantized["bnb-nf4"][1]
    bnb.save_pretrained(tmp_path / "bnb")
    on_disk = (tmp_path / "bnb" / "model.safetensors").stat().st_size
    assert on_disk == pytest.approx(size, rel=0.005)  # same tensors; header metadata differs by a few bytes
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bnb", device_map="cpu")
    assert serialized_size_bytes(reloaded) == size

    # optimum-quanto: safetensors of the state dict, requantize() into a fresh model.
    q, size, _ = quantized["quanto-qint4"]
    path = str(tmp_path / "quanto.safetensors")
    save_file(q.state_dict(), path)
    assert (tmp_path / "quanto.safetensors").stat().st_size == pytest.approx(size, rel=0.005)
    r = load_model(trained.model_cfg).model
    requantize(r, load_file(path), quantization_map(q), device=CPU)
    assert serialized_size_bytes(r) == size
    with torch.no_grad():
        assert torch.equal(r(x).logits, q(x).logits)

    # torchao: torch.save of the tensor subclasses, loaded back with assign=True.
    t, size, _ = quantized["torchao-int8-wo"]
    torch.save(t.state_dict(), tmp_path / "ao.pt")
    r = load_model(trained.model_cfg).model
    r.load_state_dict(torch.load(tmp_path / "ao.pt", weights_only=False), assign=True)
    assert type(r.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert serialized_size_bytes(r) == size
    with torch.no_grad():
        assert torch.equal(r(x).logits, t(x).logits)

    # HQQ: each HQQLinear's state dict into an empty HQQLinear.
    h, size, _ = quantized["hqq-4bit"]
    sd = h.state_dict()
    r = load_model(trained.model_cfg).model
    for name, module in h.named_modules():
        if isinstance(module, HQQLinear):
            empty = HQQLinear(None, quant_config=BaseQuantizeConfig(nbits=4, group_size=64),
                              compute_dtype=torch.float32, device="cpu")
            empty.load_state_dict({k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")})
            replace_module(r, name, empty)
    assert serialized_size_bytes(r) == size
    with torch.no_grad():
        assert torch.equal(r(x).logits, h(x).logits)


@pytest.mark.parametrize("name", INT8 + INT4)
def test_outputs_and_perplexity_stay_close_to_fp32(trained, quantized, name):
    model, _, _ = quantized[name]
    with torch.no_grad():
        out = model(trained.chunks).logits.float()
    err = ((out - trained.logits).norm() / trained.logits.norm()).item()
    assert 1e-6 < err < LOGIT_ERR[name]  # really quantized, and close
    assert perplexity(out, trained.chunks) / trained.ppl < PPL_RATIO[name]


@pytest.mark.parametrize("name", INT8 + INT4)
def test_counting_resident_bytes_after_a_forward_changes_nothing(trained, quantized, name):
    """The runners count a model's resident bytes after its timed forwards, in inference mode.
    bitsandbytes' CPU 4-bit layers unpack their weights in place when their state dict is
    taken (later forwards then gave perplexity 10^8), torchao's tensors refuse state_dict()
    in inference mode: the count must read the model as it is and leave it so."""
    model, _, _ = quantized[name]
    x = trained.chunks[:2]
    with torch.inference_mode():
        before = model(x).logits
        resident = model_resident_bytes(model)
        assert model_resident_bytes(model) == resident
        after = model(x).logits
    assert torch.equal(before, after)
    # The format's bytes, as held: bitsandbytes' CPU repack keeps the 4-bit block scales in bf16 (3% less).
    assert resident == pytest.approx(expected_bytes(trained.fp32, name), rel=0.04)


@pytest.mark.parametrize("name", ["bnb-nf4", "quanto-qint4"])
def test_generate_under_inference_mode_with_odd_shapes(name):
    """The scenarios run under torch.inference_mode, and the tiny preset's MLP width
    (688) is not a multiple of 32 or 128: bitsandbytes' CPU 4-bit fast path and
    quanto's packed int4 used to fail there."""
    from effbench.config.schema import BuiltinModelConfig

    loaded = load_model(BuiltinModelConfig(name="odd", hidden_size=64, num_layers=1, num_heads=2,
                                           intermediate_size=172))
    cfg = technique_cfg(name)
    model = get_technique(cfg.method).apply(loaded.model, cfg, CPU)
    x = torch.randint(0, 300, (1, 8))
    with torch.inference_mode():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=3, min_new_tokens=3,
                             do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)


def _infer(trained, technique, url, *extra):
    return execute(compose_cfg(["model=artifact", f"model.run_id={trained.run_id}", f"model.store_url={trained.url}",
                                f"technique={technique}", f"store.url={url}", *FAST, *extra]))


def test_mcr_from_stored_rows_matches_a_hand_computation(trained):
    url = f"sqlite:///{trained.dir}/mcr.db"
    base = _infer(trained, "fp32", url)
    quant = _infer(trained, "quanto-qint4", url)
    assert base.status is Status.OK and quant.status is Status.OK, (base.error, quant.error)
    stored = {r.technique: r for r in open_store(url).runs()}
    b, q = stored["fp32"], stored["quanto-qint4"]
    value = lambda r, k: r.metric(k).value  # noqa: E731
    assert value(b, "compression.mcr") == pytest.approx(1.0)
    hand = value(q, "compression.ratio") * value(b, "quality.perplexity") / value(q, "quality.perplexity")
    assert value(q, "compression.mcr") == pytest.approx(hand, rel=1e-9)
    assert b.id in q.metric("compression.mcr").note
    assert value(q, "compression.ratio") > 4

    # No fp32 run in a store: the baseline perplexity is measured in-process on the
    # model loaded afresh at fp32, on the same held-out tokens.
    subject = prepare(compose_cfg(["model=artifact", f"model.run_id={trained.run_id}",
                                   f"model.store_url={trained.url}", "technique=quanto-qint4",
                                   f"store.url=sqlite:///{trained.dir}/empty.db", *FAST])).subject
    heldout = heldout_ids(subject, trained.tok)
    baseline = baseline_quality(subject, CPU, "float32", heldout)
    assert "in-process" in baseline.note
    assert baseline.perplexity == pytest.approx(value(b, "quality.perplexity"), rel=1e-6)
    [mcr] = mcr_metrics(baseline.perplexity, baseline.note, 4.0, q.metrics)
    assert mcr.value == pytest.approx(4.0 * baseline.perplexity / value(q, "quality.perplexity"))


@pytest.mark.parametrize(("technique", "package"), [("torchao-int4-wo", None), ("awq-int4", "gptqmodel"),
                                                    ("gptq-int4", "gptqmodel")])
def test_gpu_only_technique_is_stored_skipped_on_cpu(tmp_path, technique, package):
    import importlib.util

    url = f"sqlite:///{tmp_path}/skip.db"
    r = execute(compose_cfg([f"technique={technique}", f"store.url={url}", *FAST]))
    stored = open_store(url).get(r.id)
    assert stored.status is Status.SKIPPED and stored.metrics == []
    assert "needs a CUDA GPU" in stored.error and "device is cpu" in stored.error
    if package and importlib.util.find_spec(package) is None:  # and what to install for the GPU machine
        assert "pip install" in stored.error and package in stored.error.split("pip install")[1]


def test_missing_backend_package_is_a_skip_reason_on_a_supported_device():
    spec = get_technique("awq")
    if not spec.missing_packages():
        pytest.skip("gptqmodel is installed")
    with pytest.raises(UnsupportedTechnique, match="pip install gptqmodel"):
        spec.check_device(torch.device("cuda"))


# ---------------------------------------------------------------------------
# The real model: SmolLM2-135M-Instruct (its Q4_1 release dequantized to fp32).
# 4-bit costs it perplexity where it cost the tiny checkpoint almost none: SMOLLM2_PPL_RATIO
# bounds it: the sweep measured 1.21x (HQQ), 1.29x (NF4), 1.53x (FP4) and 1.56x (quanto) over
# 4,096 held-out tokens (docs/results/smollm2.md); a layer quantized wrong gives 10^6x.
# Its tied 49k × 576 embedding stays fp32 in every technique (21% of the fp32 bytes), so
# a 4-bit file is ~3x smaller, not ~6x.
SMOLLM2_PPL_RATIO = {"bnb-nf4": 1.45, "bnb-fp4": 1.75, "quanto-qint4": 1.8, "hqq-4bit": 1.4}


@pytest.fixture(scope="module")
def smollm2_fp32(smollm2):
    ids = smollm2.tokenizer(load_corpus().heldout_text, add_special_tokens=False).input_ids[:2048]
    chunks = torch.tensor(ids).view(8, 256)
    with torch.no_grad():
        ppl = perplexity(smollm2.model(chunks).logits, chunks)
    return SimpleNamespace(chunks=chunks, ppl=ppl, bytes=serialized_size_at(smollm2.model, torch.float32))


@pytest.mark.smollm2
@pytest.mark.parametrize("name", INT4)
def test_smollm2_4bit_perplexity_and_size_are_bounded(smollm2, smollm2_fp32, name):
    cfg = technique_cfg(name)
    fresh = load_model(OmegaConf.to_object(compose_cfg(["model=smollm2-135m"]).model)).model  # the cached checkpoint
    model = get_technique(cfg.method).apply(fresh, cfg, CPU)
    size = serialized_size_bytes(model)
    expected = expected_bytes(smollm2.model, name)
    assert expected <= size <= expected * 1.02  # as on the tiny checkpoint: header and per-layer metadata
    assert 2.9 < smollm2_fp32.bytes / size < 3.2  # the format's band, the fp32 embedding included
    with torch.no_grad():
        ppl = perplexity(model(smollm2_fp32.chunks).logits.float(), smollm2_fp32.chunks)
    print(f"{name}: perplexity {ppl:.3f} vs fp32 {smollm2_fp32.ppl:.3f} ({ppl / smollm2_fp32.ppl:.3f}x), "
          f"{smollm2_fp32.bytes / size:.3f}x smaller")
    assert 1.0 < ppl / smollm2_fp32.ppl < SMOLLM2_PPL_RATIO[name]

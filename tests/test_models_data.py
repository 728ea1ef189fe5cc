"""Model zoo, the hub/local-path loader and the bundled corpus."""

import json

import pytest
import torch

from effbench.config.schema import HfModelConfig
from effbench.data import load_corpus
from effbench.models import load_model, parameter_counts


def test_builtin_model_is_deterministic(tiny_cfg):
    a, b = load_model(tiny_cfg), load_model(tiny_cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_gqa_shrinks_kv_projections_by_heads_over_kv_heads(tiny_cfg):
    from dataclasses import replace

    mha = parameter_counts(load_model(tiny_cfg).model)["total"]
    gqa = parameter_counts(load_model(replace(tiny_cfg, arch_options={"num_kv_heads": 1})).model)["total"]
    d, layers = tiny_cfg.hidden_size, tiny_cfg.num_layers
    kv_saved = 2 * d * (d - d // tiny_cfg.num_heads) * layers  # K and V: d×d → d×(d/heads)
    assert mha - gqa == kv_saved


def test_invalid_head_split_names_the_keys(tiny_cfg):
    from dataclasses import replace

    with pytest.raises(ValueError, match="num_kv_heads=3 must divide model.num_heads=4"):
        load_model(replace(tiny_cfg, arch_options={"num_kv_heads": 3}))
    with pytest.raises(ValueError, match="kv_heads not an option of arch 'llama'; valid: num_kv_heads"):
        load_model(replace(tiny_cfg, arch_options={"kv_heads": 3}))


def test_hf_path_loads_a_saved_model_and_tokenizer(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(HfModelConfig(name="saved", id=str(tmp_path)))
    x = torch.randint(3, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=x).logits, tiny.model(input_ids=x).logits)
    assert loaded.tokenizer("abc").input_ids == tiny.tokenizer("abc").input_ids


def test_a_byte_tokenizer_saved_beside_a_mixtral_config_reloads(tmp_path):
    # transformers maps model_type mixtral to a `tokenizers` backend, which cannot
    # build a ByT5 tokenizer: the MoE checkpoints of the architecture sweep hit this.
    from transformers import MixtralConfig

    from effbench.models.zoo import build_tokenizer, load_tokenizer

    MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1).save_pretrained(tmp_path)
    build_tokenizer("byte").save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert type(tok).__name__ == "ByT5Tokenizer" and tok("ab").input_ids == [100, 101, 1]


def test_hf_path_with_unknown_id_fails_offline():
    with pytest.raises(OSError):
        load_model(HfModelConfig(name="x", id="no-such-org/no-such-model-effbench"))


def test_bundled_corpus_split_is_fixed_and_disjoint():
    a, b = load_corpus("pydoc"), load_corpus("pydoc")
    assert [d.name for d in a.heldout] == [d.name for d in b.heldout]
    assert not {d.name for d in a.train} & {d.name for d in a.heldout}
    assert len(a.train_text) > 300_000 and len(a.heldout_text) > 10_000


def test_stdlib_corpus_excludes_tests():
    c = load_corpus("stdlib", max_chars=300_000)
    names = [d.name for d in c.train + c.heldout]
    assert names and not any("/test/" in f"/{n}" or n.startswith("test/") for n in names)


def test_local_jsonl_and_bad_field(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text("\n".join(json.dumps({"body": f"document number {i} " * 20}) for i in range(40)))
    c = load_corpus("local", str(p), text_field="body")
    assert len(c.train) + len(c.heldout) == 40
    with pytest.raises(KeyError, match="no field 'text'"):
        load_corpus("local", str(p))


def test_local_text_file_is_split_by_position(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("x" * 1000)
    c = load_corpus("local", str(p), heldout_fraction=0.1)
    assert (len(c.train_text), len(c.heldout_text)) == (900, 100)

import os

import pytest
import torch

# No test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_cfg():
    from effbench.config.schema import BuiltinModelConfig

    return BuiltinModelConfig(name="tiny-llama", hidden_size=128, num_layers=2, num_heads=4,
                              intermediate_size=344)


@pytest.fixture(scope="session")
def tiny(tiny_cfg):
    from effbench.models import load_model

    return load_model(tiny_cfg)


@pytest.fixture
def cpu():
    return torch.device("cpu")


@pytest.fixture(scope="session")
def trained_tiny(tiny_cfg):
    """A tiny Llama trained briefly on the bundled corpus's train split (plain AdamW loop)."""
    from effbench.data import load_corpus
    from effbench.models import load_model

    loaded = load_model(tiny_cfg)
    model = loaded.model.train()
    ids = torch.tensor(loaded.tokenizer(load_corpus().train_text, add_special_tokens=False).input_ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        starts = torch.randint(0, len(ids) - 129, (16,), generator=gen).tolist()
        x = torch.stack([ids[s : s + 128] for s in starts])
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), loaded.tokenizer


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M-Instruct (Q4_1 release) in fp32, loaded once per session through
    configs/model/smollm2-135m.yaml; its plain checkpoint is cached under results/models
    ($EFFBENCH_MODEL_CACHE), so only the first session pays the GGUF conversion (~45 s)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from effbench.hydra_app import CONFIG_DIR
    from effbench.models import load_model

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=["model=smollm2-135m"]).model)
    return load_model(cfg)

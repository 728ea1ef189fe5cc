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

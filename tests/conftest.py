"""Shared test set-up: one torch thread (two shared cores: more only contend), quiet progress bars,
wandb offline, and helpers to compose the real Hydra config."""

import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def compose_cfg():
    """``compose_cfg(*overrides)`` → the composed config, as ``run.py`` would see it."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


TOY_BRANCHES = {
    "A": {"prob": 1 / 3, "pattern": "110"},
    "B": {"prob": 1 / 3, "pattern": "001"},
    "C": {"prob": 1 / 3, "pattern": "random"},
}


@pytest.fixture
def make_toy():
    """``make_toy(**overrides)`` → a validated ToyABC task (default branches unless overridden)."""
    from rlcircuits.registry import validate
    from rlcircuits.tasks.toy_abc import ToyABC, ToyABCConfig

    return lambda **over: ToyABC(validate(ToyABCConfig, {"branches": TOY_BRANCHES} | over, "task"))

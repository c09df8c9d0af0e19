"""The composed config: every option of every group validates, and bad input fails before any work,
naming the key."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from rlcircuits.pipeline import build_spec
from rlcircuits.registry import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment"))
@pytest.mark.parametrize("debug", [None, "smoke"])
def test_every_experiment_validates(compose_cfg, experiment, debug):
    spec = build_spec(compose_cfg(f"experiment={experiment}", *([f"debug={debug}"] if debug else [])))
    assert spec.arms and spec.task.name
    if debug == "smoke":
        assert all(t.steps <= 5 for t in spec.arms.values())


NEEDS = {"model=hf": "model.path"}  # options that cannot validate without a further value, and its key
WITH = {"task=cards": ["analysis=[accuracy]"]}  # the default analysis (kl_optimum) is for toy_abc only


@pytest.mark.parametrize("override", [f"{g}={o}" for g in ("task", "model", "trainer", "logger") for o in options(g)])
def test_every_group_option_validates(compose_cfg, override):
    if override in NEEDS:
        with pytest.raises(ConfigError, match=f"^{NEEDS[override]}: "):
            build_spec(compose_cfg(override))
    else:
        build_spec(compose_cfg(override, *WITH.get(override, [])))


@pytest.mark.parametrize("analysis", options("analysis"))
def test_every_analysis_validates_on_its_task(compose_cfg, analysis):
    experiment = "toy_kl" if analysis == "kl_optimum" else "cards_sft_vs_rl"
    spec = build_spec(compose_cfg(f"experiment={experiment}", f"analysis=[{analysis}]", "alpha=1"))
    assert list(spec.analyses) == [analysis]


def test_unknown_option_lists_valid_ones(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="toy_abc"):
        compose_cfg("task=nope")


@pytest.mark.parametrize("override,key", [
    ("alpha=-1", "alpha"),
    ("trainer.alpha=-1", "trainer.alpha"),
    ("task.branches.A.prob=0.5", "task.branches"),
    ("task.branches.A.pattern=1a0", "task.branches.A.pattern"),
    ("task.reward=nope", "task.reward"),
    ("+task.colour=red", "task.colour"),
    ("trainer.num_generations=1", "trainer.num_generations"),
    ("trainer.lr=0", "trainer.lr"),
    ("base.trainer.steps=0", "base.trainer.steps"),
    ("model.n_heads=2", "model.n_heads"),
    ("device=tpu", "device"),
    ("logger=wandb", None),
    ("logger=wandb logger.mode=sometimes", "logger.mode"),
    ("analysis.kl_optimum.n_samples=100", "analysis.kl_optimum.n_samples"),
    ("base.checkpoint=/does/not/exist", "base.checkpoint"),
])
def test_bad_values_fail_naming_the_key(compose_cfg, override, key):
    cfg = compose_cfg(*override.split())
    if key is None:
        build_spec(cfg)
        return
    with pytest.raises(ConfigError, match=f"^{key}: "):
        build_spec(cfg)


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    from rlcircuits.pipeline import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda")

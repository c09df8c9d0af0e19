"""The composed config: every option of every group validates, and bad input fails before any work,
naming the key."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from rlcircuits.analysis import ANALYSES
from rlcircuits.logging import LOGGERS
from rlcircuits.models import MODELS
from rlcircuits.pipeline import build_spec
from rlcircuits.registry import ConfigError
from rlcircuits.tasks import TASKS
from rlcircuits.trainers import TRAINERS

CONF = Path(__file__).resolve().parents[1] / "conf"
REGISTRIES = {"task": TASKS, "model": MODELS, "trainer": TRAINERS, "analysis": ANALYSES, "logger": LOGGERS}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment"))
@pytest.mark.parametrize("debug", [None, "smoke"])
def test_every_experiment_validates(compose_cfg, experiment, debug):
    spec = build_spec(compose_cfg(f"experiment={experiment}", *([f"debug={debug}"] if debug else [])))
    assert spec.arms and spec.task.name
    if debug == "smoke":
        trainers = [*spec.arms.values(), *([spec.base_trainer] if spec.base_trainer else [])]
        assert all(t.steps <= 5 and t.eval_examples <= 64 for t in trainers)
        assert all(getattr(a, "n_examples", 0) <= 64 for a in spec.analyses.values())


NEEDS = {"model=hf": "model.path"}  # options that cannot validate without a further value, and its key
WITH = {"task=cards": ["analysis=[accuracy]"]}  # the default analysis (kl_optimum) is for toy_abc only


@pytest.mark.parametrize("override", [f"{g}={o}" for g in ("task", "model", "trainer", "logger") for o in options(g)])
def test_every_group_option_validates(compose_cfg, override):
    if override in NEEDS:
        with pytest.raises(ConfigError, match=f"^{NEEDS[override]}: "):
            build_spec(compose_cfg(override))
    else:
        build_spec(compose_cfg(override, *WITH.get(override, [])))


@pytest.mark.parametrize("group,option", [(g, o) for g in REGISTRIES for o in options(g)])
def test_every_schema_field_is_in_the_composed_config(compose_cfg, group, option):
    """Hydra rejects overrides of keys the composed config lacks: every field of the schema must be there."""
    node = compose_cfg(f"{group}={option}")[group]
    node = node[option] if group == "analysis" else node  # analyses sit under their name: a run has several
    assert {f.name for f in dataclasses.fields(REGISTRIES[group].get(node.name).schema)} <= set(node)


def test_fields_the_yaml_leaves_out_are_overridable(compose_cfg):
    spec = build_spec(compose_cfg("trainer.beta1=0.5", "base.trainer.beta2=0.95", "model.dropout=0.1",
                                  "task.branches.A.p_one=0.7"))
    assert (spec.arms["policy"].beta1, spec.base_trainer.beta2, spec.model.dropout) == (0.5, 0.95, 0.1)
    assert spec.task.branches["A"].p_one == 0.7


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_model_init_std_sets_the_initial_weights(make_toy, std):
    from rlcircuits.models.gpt2 import GPT2ModelConfig, build_gpt2

    model = build_gpt2(GPT2ModelConfig(d_model=16, n_heads=4, d_mlp=64, init_std=std), make_toy())
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(std, rel=0.05)


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
    ("model.init_std=0", "model.init_std"),
    ("model.activation=nope", "model.activation"),
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


def test_help_lists_every_group_and_its_options():
    out = subprocess.run([sys.executable, str(CONF.parent / "run.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    for group in [*REGISTRIES, "experiment", "debug"]:
        assert f"\n{group}: {', '.join(options(group))}\n" in out
    assert "alpha: " in out  # the composed config follows the groups

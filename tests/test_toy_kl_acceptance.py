"""Issue 2's acceptance check, scaled down to one α for CI (benchmarks/toy_kl_acceptance.py runs the
full grid): the RL policy reaches the exact KL-regularised optimum, and stays there when its checkpoint is
re-sampled independently."""

from transformers import AutoModelForCausalLM

from rlcircuits.analysis.kl_optimum import sampled_shares, total_variation
from rlcircuits.pipeline import load_results, run
from rlcircuits.registry import validate
from rlcircuits.tasks.toy_abc import ToyABC, ToyABCConfig

BOUND = 0.03


def test_default_toy_kl_reaches_the_exact_optimum(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.chdir(tmp_path)
    # seed 4: default SFT stalls on some seeds (3 and 5 of 0–5 with today's libraries); a stalled base's optimum
    # is far from the closed form and its C branch barely tilts, which the checks below would rightly reject
    cfg = compose_cfg("experiment=toy_kl", "alpha=1.0", "seed=4")
    run(cfg)
    results = load_results(tmp_path)
    assert results["tv_base_data"] <= BOUND
    assert results["tv_optimal_closed_form"] <= BOUND  # the trained base is near-perfect
    assert results["tv_policy_optimal"] <= BOUND

    task = ToyABC(validate(ToyABCConfig, cfg.task, "task"))
    policy = AutoModelForCausalLM.from_pretrained(results["checkpoints"]["policy"]).eval()
    resampled = sampled_shares(policy, task, 16384, seed=12345)
    optimal = results["distribution"]["optimal"] | {"malformed": results["malformed"]["optimal"]}
    assert total_variation(resampled, optimal) <= BOUND
    # and the optimum is not trivially the base: RL had to move mass, and not only between branches —
    # reweighting the base's branches alone misses C's tilt toward 1s (0.67 : 0.09 : 0.24 against 0.53 : 0.07 : 0.40)
    assert total_variation(results["distribution"]["base"], results["distribution"]["optimal"]) > 0.1
    assert results["tv_policy_branches_only"] > 0.1


def test_a_near_perfect_base_has_the_closed_form_optimum(tmp_path, monkeypatch, compose_cfg):
    """The enumerated optimum equals the perfect-base closed form once the base's excess loss is near zero.
    Default SFT (2,000 steps) stalls on some seeds — seed 3 here at 0.35 nats (docs/toy_kl.md, *The base:
    SFT stalls*) — so this base trains for 4,000; RL barely runs, as only the base's optimum is checked."""
    monkeypatch.chdir(tmp_path)
    run(compose_cfg("experiment=toy_kl", "alpha=1.0", "seed=3", "base.trainer.steps=4000", "trainer.steps=10"))
    results = load_results(tmp_path)
    assert results["base_excess_loss"] <= 0.005
    assert results["tv_optimal_closed_form"] <= BOUND

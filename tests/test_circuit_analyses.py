"""The registered circuit analyses on the cards task: padded prompts read like unpadded ones, every analysis
runs on three tiny checkpoints and writes its headline, JSON and plots, and bad configs fail before work."""

import json

import numpy as np
import pytest
import torch

from rlcircuits.analysis import ANALYSES, patching
from rlcircuits.analysis.prompts import answer_logits, at_offsets, pad, split_prompts
from rlcircuits.io import save_checkpoint
from rlcircuits.models.gpt2 import GPT2ModelConfig, build_gpt2
from rlcircuits.models.hooked import load_hooked, to_hooked
from rlcircuits.pipeline import build_spec
from rlcircuits.registry import ConfigError, validate
from rlcircuits.tasks.cards.config import CardsConfig
from rlcircuits.tasks.cards.task import Cards

SPLITS = ["test", "ood_colour", "ood_composition", "ood_paraphrase", "ood_threshold"]
ARMS = {"base": "init", "policy": "rl", "control": "sft"}


@pytest.fixture(scope="module")
def task():
    return Cards(CardsConfig())


def _model(task, seed):
    torch.manual_seed(seed)
    return build_gpt2(GPT2ModelConfig(d_model=32, n_heads=4, n_layers=2, d_mlp=64), task).eval()


@pytest.fixture(scope="module")
def checkpoints(task, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: save_checkpoint(_model(task, seed), task.tokenizer, root / name)
            for seed, name in enumerate(ARMS)}


def test_right_padding_reads_like_each_prompt_alone(task):
    """Causal attention never reads the padding: each row's answer logits equal those of its prompt alone."""
    hooked = to_hooked(_model(task, 0), task.tokenizer)
    prompts = pad(task.examples("test", 12, seed=0), task.tokenizer.pad_token_id)
    assert len(set(prompts.read_pos.tolist())) > 1  # lengths really differ
    batched = answer_logits(hooked, prompts)  # [12, d_vocab]
    for row, example in enumerate(prompts.examples):
        alone = hooked(torch.tensor([example.prompt]))[0, -1]
        torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-4)
    assert (prompts.answers == torch.tensor([e.completion[0] for e in prompts.examples])).all()
    assert prompts.mask.sum(1).tolist() == [len(e.prompt) for e in prompts.examples]


def test_at_offsets_counts_back_from_each_read_position():
    acts = torch.arange(2 * 5).reshape(2, 5, 1).float()  # row r, position p → 5r + p
    got = at_offsets(acts, torch.tensor([2, 4]), [-2, 0])[..., 0]
    assert got.tolist() == [[0.0, 2.0], [7.0, 9.0]]
    with pytest.raises(ValueError, match="before the start"):
        at_offsets(acts, torch.tensor([1, 4]), [-2])


def _config(name, **over):
    return validate(ANALYSES[name].schema, {"name": name, "n_examples": 24} | over, f"analysis.{name}")


def _finite(x):
    assert np.isfinite(np.asarray(x, dtype=float)).all()


def _outputs(tmp_path, name, plots):
    full = json.loads((tmp_path / "analysis" / f"{name}.json").read_text())
    assert set(full) >= set(ARMS.values()) or name == "ablation"
    for plot in plots:
        assert (tmp_path / "plots" / plot).stat().st_size > 0
    return full


def test_probe(task, checkpoints, tmp_path):
    out = ANALYSES["probe"].fn(_config("probe", offsets=[-2, -1, 0]), task, checkpoints, tmp_path)["probe"]
    full = _outputs(tmp_path, "probe", [f"probe_{arm}.png" for arm in ARMS.values()])
    labels = {"rule", "answer", "big"} | {f"colour_sum_{c}" for c in task.cfg.colours}
    for arm in ARMS.values():
        assert set(out[arm]) == labels
        for best in out[arm].values():
            assert best["position"] in (-2, -1, 0) and 0 <= best["layer"] <= 2
            assert best["margin"] == pytest.approx(best["id_score"] - best["id_control"])
            assert set(best) - {"layer", "position", "id_score", "id_control", "margin"} == set(SPLITS[1:])
        scores = np.array(full[arm]["scores"]["colour_sum_RED"]["test"])
        assert scores.shape == (3, 3)  # layers 0..2 × offsets
        _finite(scores)


def test_probe_unknown_label_names_the_labels_there_are(task, checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="analysis.probe.labels.colour_product: .*colour_sum_RED"):
        ANALYSES["probe"].fn(_config("probe", labels={"colour_product": "regression"}), task, checkpoints, tmp_path)


def test_patching(task, checkpoints, tmp_path, monkeypatch):
    """Random models never answer right, so no pair is usable: every split is reported as skipped. With the
    selection widened to every pair of the commonest length, the patching itself runs and is finite."""
    cfg = _config("patching", n_examples=48, max_pairs=8)
    skipped = ANALYSES["patching"].fn(cfg, task, checkpoints, tmp_path)["patching"]
    assert all(r["n_pairs"] < cfg.min_pairs and "skipped" in r for arm in skipped.values() for r in arm.values())

    def commonest_length(model, clean, corrupt, max_pairs):
        return torch.nonzero(clean.read_pos == torch.mode(clean.read_pos).values).flatten()[:max_pairs]

    monkeypatch.setattr(patching, "usable_pairs", commonest_length)
    out = ANALYSES["patching"].fn(cfg, task, checkpoints, tmp_path)["patching"]
    full = _outputs(tmp_path, "patching", [f"patching_{arm}.png" for arm in ARMS.values()])
    for arm in ARMS.values():
        for split in cfg.splits:
            head = out[arm][split]
            assert head["n_pairs"] >= cfg.min_pairs and head["clean_logit_diff"] != head["corrupt_logit_diff"]
            resid = np.array(full[arm][split]["resid"]["patched"])
            assert resid.shape == (3, head["length"])  # embed + 2 layers × positions
            _finite(resid)
            # Patching the whole final residual stream restores the clean run exactly.
            assert resid[-1, -1] == pytest.approx(1.0, abs=1e-4)
            assert np.array(full[arm][split]["heads"]["patched"]).shape == (2, 4)


def test_ablation(task, checkpoints, tmp_path):
    out = ANALYSES["ablation"].fn(_config("ablation", top_k=2), task, checkpoints, tmp_path)["ablation"]
    full = _outputs(tmp_path, "ablation", [f"ablation_{m}_{arm}.png" for m in ("zero", "mean")
                                            for arm in ARMS.values()])
    assert set(out["jaccard"]) == {"init_vs_rl", "init_vs_sft", "rl_vs_sft"}
    for pair in out["jaccard"].values():
        assert all(0 <= j <= 1 for method in pair.values() for j in method.values())
    for arm in ARMS.values():
        for method in ("zero", "mean"):
            assert all(len(heads) == 2 for heads in out["top_heads"][arm][method].values())
            logit_change = np.array(full["results"][arm][method]["logit_change"]["test"])
            assert logit_change.shape == (2, 4) and (logit_change > 0).all()  # every head changes the logits


def test_sae(task, checkpoints, tmp_path):
    cfg = _config("sae", steps=20, batch_size=64, expansion=2)
    out = ANALYSES["sae"].fn(cfg, task, checkpoints, tmp_path)["sae"]
    full = _outputs(tmp_path, "sae", [f"sae_{arm}.png" for arm in ARMS.values()])
    for arm in ARMS.values():
        assert set(out["n_id_specific"][arm]) == set(SPLITS[1:]) and out["id"][arm]["d_sae"] == 64
        assert (tmp_path / "sae" / arm).is_dir()
        freq = np.array(full[arm]["firing_frequency"]["test"])
        assert freq.shape == (64,) and ((0 <= freq) & (freq <= 1)).all()


def test_logit_lens(task, checkpoints, tmp_path):
    out = ANALYSES["logit_lens"].fn(_config("logit_lens"), task, checkpoints, tmp_path)["logit_lens"]
    full = _outputs(tmp_path, "logit_lens", [f"logit_lens_{arm}.png" for arm in ARMS.values()])
    prompts = split_prompts(task, _config("logit_lens"))
    for arm, path in zip(ARMS.values(), checkpoints.values()):
        final = (answer_logits(load_hooked(path), prompts["test"]).argmax(-1) == prompts["test"].answers).float()
        assert out[arm]["test"]["final_accuracy"] == pytest.approx(final.mean().item())  # last layer = the model
        assert len(full[arm]["test"]["accuracy"]) == 3


@pytest.mark.parametrize("overrides, message", [
    (["experiment=toy_kl", "analysis=[kl_optimum,probe]"], "analysis.probe.task: .*right answers"),
    (["experiment=toy_kl", "analysis=[accuracy]"], "analysis.accuracy.task: .*not ToyABC"),
    (["experiment=cards_sft_vs_rl", "analysis=[kl_optimum]", "alpha=1"], "analysis.kl_optimum.task: .*toy_abc"),
    (["experiment=cards_sft_vs_rl", "analysis.patching.splits=[test]"],
     "analysis.patching.splits: 'test' has no ID twins"),
    (["experiment=cards_sft_vs_rl", "analysis.probe.splits=[nope]"], "analysis.probe.splits: 'nope' is not a split"),
    (["experiment=cards_sft_vs_rl", "analysis.ablation.methods=[zero,resample]"], "analysis.ablation.methods"),
    (["experiment=cards_sft_vs_rl", "analysis.probe.labels.rule=ordinal"], "analysis.probe.labels.rule"),
])
def test_bad_analysis_config_fails_before_work(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_spec(compose_cfg(*overrides))

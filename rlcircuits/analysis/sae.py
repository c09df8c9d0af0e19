"""Sparse-autoencoder features of one hook, and which of them survive out of distribution.

An SAE (SAELens ``StandardTrainingSAE``: ReLU encoder, L1 sparsity penalty) is trained on the ID
activations of one hook with SAELens' ``SAETrainer`` fed by an in-memory data provider — no language-model
runner, dataset or wandb needed. Each feature's firing frequency and mean activation are then measured per
split, and features are sorted into ID-specific (fire on ID, rarely on an OOD split) and OOD-stable (fire at
a similar rate on both). The classification is ours: SAELens trains and encodes, it does not compare splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from rlcircuits.analysis import ANALYSES
from rlcircuits.analysis.prompts import CircuitConfig, hooked_arms, split_prompts
from rlcircuits.io import save_figure, write_json
from rlcircuits.registry import check

if TYPE_CHECKING:  # imported where used: see rlcircuits/analysis/__init__.py
    from sae_lens import StandardTrainingSAE
    from transformer_lens import HookedTransformer


@torch.no_grad()
def hook_activations(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hook_name: str,
    positions: Sequence[int] | None = None,
    batch_size: int = 256,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Activations of ``hook_name`` (a [batch, seq, d] hook): [n_rows, d].

    Rows are every position in ``positions`` (default all) of every prompt, or, with ``mask`` [batch, seq]
    (True on real tokens of right-padded prompts), every real token.
    """
    if positions is not None and mask is not None:
        raise ValueError("pass positions or mask, not both")
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], names_filter=[hook_name])
        acts = cache[hook_name]  # [b, seq, d]
        if acts.ndim != 3:
            raise ValueError(f"hook {hook_name!r} has shape {tuple(acts.shape)}; use a [batch, seq, d] hook "
                             "such as blocks.{l}.hook_resid_post or blocks.{l}.hook_mlp_out")
        if mask is not None:
            acts = acts[mask[start:start + batch_size]]  # [n_real, d]
        elif positions is not None:
            acts = acts[:, list(positions)]
        chunks.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return torch.cat(chunks)


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless random minibatches of rows of ``acts`` [n, d]: the trainer's data provider."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield acts[torch.randint(0, acts.shape[0], (batch_size,), generator=gen)]


def train_sae(
    acts: torch.Tensor,
    d_sae: int,
    l1_coefficient: float = 1.0,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-4,
    seed: int = 0,
) -> StandardTrainingSAE:
    """Train a standard (ReLU + L1) SAE on ``acts`` [n, d_in] for ``steps`` minibatches at constant ``lr``."""
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=acts.shape[1], d_sae=d_sae, l1_coefficient=l1_coefficient))
    cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr,
                           lr_end=lr, device="cpu", logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(cfg=cfg, sae=sae, data_provider=_batches(acts, batch_size, seed)).fit()


@torch.no_grad()
def feature_stats(sae: StandardTrainingSAE, acts: torch.Tensor) -> dict:
    """Per-feature ``firing_frequency`` and ``mean_activation`` [d_sae], plus ``l0`` and ``explained_variance``.

    acts: [n, d_in]. A feature fires on a row when its activation is > 0; explained variance is
    1 − ‖x − x̂‖² / ‖x − mean(x)‖² of the SAE reconstruction.
    """
    features = sae.encode(acts)  # [n, d_sae]
    recon = sae.decode(features)  # [n, d_in]
    residual = ((acts - recon) ** 2).sum()
    total = ((acts - acts.mean(0)) ** 2).sum().clamp_min(1e-12)
    fires = (features > 0).float()
    return {
        "firing_frequency": fires.mean(0).numpy(),
        "mean_activation": features.mean(0).numpy(),
        "l0": fires.sum(1).mean().item(),
        "explained_variance": (1 - residual / total).item(),
    }


def classify_features(freq_id: np.ndarray, freq_ood: np.ndarray, active: float = 0.01,
                      specific_ratio: float = 0.1, stable_ratio: float = 0.5) -> dict:
    """Sort features that fire on ID (frequency ≥ ``active``) by their OOD frequency relative to ID.

    ID-specific: ``freq_ood ≤ specific_ratio · freq_id``. OOD-stable: ``freq_ood / freq_id`` within
    ``[stable_ratio, 1 / stable_ratio]``. Others (dead on ID, or in between) are neither.
    Returns boolean masks ``id_specific`` and ``ood_stable`` [d_sae].
    """
    fires_id = freq_id >= active
    ratio = freq_ood / np.maximum(freq_id, 1e-12)
    return {"id_specific": fires_id & (ratio <= specific_ratio),
            "ood_stable": fires_id & (ratio >= stable_ratio) & (ratio <= 1 / stable_ratio)}


def sae_features(
    model: HookedTransformer,
    tokens: Mapping[str, torch.Tensor],
    hook_name: str,
    d_sae: int,
    id_split: str = "id",
    positions: Sequence[int] | None = None,
    l1_coefficient: float = 1.0,
    steps: int = 2000,
    batch_size: int = 256,
    lr: float = 3e-4,
    active: float = 0.01,
    specific_ratio: float = 0.1,
    stable_ratio: float = 0.5,
    seed: int = 0,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Train an SAE on ``tokens[id_split]``'s ``hook_name`` activations; compare its features across splits.

    tokens: split → [batch, seq]; positions: which positions' activations to use (default all), or
    masks: split → [batch, seq] real-token masks of right-padded prompts (every real token is used).
    Returns ``{"sae": the trained SAE (``sae.save_model(dir)`` saves it), "hook_name": str,
    "firing_frequency" / "mean_activation": {split: [d_sae]}, "l0" / "explained_variance": {split: float},
    "id_specific" / "ood_stable": {ood split: bool [d_sae]}, "n_id_specific" / "n_ood_stable": {ood split: int},
    "id_split": str}``. Thresholds as in ``classify_features``.
    """
    acts = {s: hook_activations(model, t, hook_name, positions, batch_size, None if masks is None else masks[s])
            for s, t in tokens.items()}
    sae = train_sae(acts[id_split], d_sae, l1_coefficient, steps, batch_size, lr, seed)
    stats = {s: feature_stats(sae, a) for s, a in acts.items()}
    result: dict = {"sae": sae, "hook_name": hook_name, "id_split": id_split}
    for key in ("firing_frequency", "mean_activation", "l0", "explained_variance"):
        result[key] = {s: st[key] for s, st in stats.items()}
    freq = result["firing_frequency"]
    classes = {s: classify_features(freq[id_split], freq[s], active, specific_ratio, stable_ratio)
               for s in tokens if s != id_split}
    for key in ("id_specific", "ood_stable"):
        result[key] = {s: c[key] for s, c in classes.items()}
        result[f"n_{key}"] = {s: int(c[key].sum()) for s, c in classes.items()}
    return result


def plot_sae_features(result: dict, path) -> None:
    """Per OOD split, a scatter of per-feature firing frequency on ID (x) vs OOD (y), coloured by class."""
    id_split, freq = result["id_split"], result["firing_frequency"]
    ood = [s for s in freq if s != id_split]
    fig, axes = plt.subplots(1, len(ood), squeeze=False, layout="constrained",
                             figsize=(4.0 * len(ood), 3.8))
    for ax, split in zip(axes[0], ood):
        specific, stable = result["id_specific"][split], result["ood_stable"][split]
        other = ~(specific | stable)
        for mask, label, colour in ((other, "other", "0.6"), (specific, "ID-specific", "tab:red"),
                                    (stable, "OOD-stable", "tab:blue")):
            ax.scatter(freq[id_split][mask], freq[split][mask], s=8, c=colour, label=f"{label} ({mask.sum()})")
        ax.plot([0, 1], [0, 1], "k--", lw=0.7)
        ax.set_xlabel(f"firing frequency on {id_split}")
        ax.set_ylabel(f"firing frequency on {split}")
        ax.set_title(f"SAE features @ {result['hook_name']}", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


@dataclass
class SAEConfig(CircuitConfig):
    name: str = "sae"
    hook_name: str = "blocks.1.hook_resid_post"
    expansion: int = 4  # d_sae = expansion × the hook's width
    l1_coefficient: float = 1.0
    steps: int = 2000
    batch_size: int = 256
    lr: float = 3.0e-4

    def __post_init__(self):
        super().__post_init__()
        check(self.expansion >= 1, "expansion", "must be ≥ 1")
        check(self.steps >= 1, "steps", "must be ≥ 1")
        check(self.l1_coefficient >= 0, "l1_coefficient", "must be ≥ 0")


@ANALYSES.register("sae", schema=SAEConfig)
def run(cfg: SAEConfig, task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    """An SAE per arm on its ID activations (every real prompt token); saved to ``sae/<arm>/`` (SAELens
    format); per-feature statistics to ``sae.json``; headline: on ID, explained variance, L0 and features that
    ever fire; per OOD split, the number of ID-specific and OOD-stable features."""
    prompts = split_prompts(task, cfg)
    full, headline = {}, {"id": {}, "n_id_specific": {}, "n_ood_stable": {}}
    for arm, model in tqdm(hooked_arms(checkpoints).items(), desc="sae", leave=False):
        names = model.hook_dict
        check(cfg.hook_name in names, "analysis.sae.hook_name",
              f"{cfg.hook_name!r} is not a hook of the model (e.g. blocks.0.hook_resid_post)")
        d_sae = cfg.expansion * (model.cfg.d_mlp if "mlp_post" in cfg.hook_name else model.cfg.d_model)
        result = sae_features(model, {s: p.tokens for s, p in prompts.items()}, cfg.hook_name, d_sae, cfg.splits[0],
                              l1_coefficient=cfg.l1_coefficient, steps=cfg.steps, batch_size=cfg.batch_size,
                              lr=cfg.lr, seed=cfg.seed, masks={s: p.mask for s, p in prompts.items()})
        result.pop("sae").save_model(str(out_dir / "sae" / arm))
        plot_sae_features(result, out_dir / "plots" / f"sae_{arm}.png")
        full[arm] = result
        id_freq = result["firing_frequency"][cfg.splits[0]]
        headline["id"][arm] = {"explained_variance": result["explained_variance"][cfg.splits[0]],
                               "l0": result["l0"][cfg.splits[0]], "alive": int((id_freq > 0).sum()), "d_sae": d_sae}
        headline["n_id_specific"][arm], headline["n_ood_stable"][arm] = result["n_id_specific"], result["n_ood_stable"]
    write_json(out_dir / "analysis" / "sae.json", full)
    return {"sae": headline}

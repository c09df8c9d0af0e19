"""Linear probes on the residual stream, per layer × position, trained on ID and scored on ID and OOD.

What is linearly decodable where, and does it stay decodable out of distribution? One scikit-learn probe
per (label, layer, position): ``RidgeClassifierCV`` for class labels (score: accuracy), ``RidgeCV`` for real
labels (score: R²), on inputs standardised on the training rows. Both are closed-form ridge fits whose penalty
is chosen by leave-one-out cross-validation: hundreds of probes train in seconds, and a probe of shuffled
labels is regularised towards predicting the mean instead of overfitting to a large negative R², which would
flatter the margin. "Layer" 0 is the embedding (``blocks.0.hook_resid_pre``), layer l ≥ 1 is
``blocks.{l-1}.hook_resid_post``, i.e. ``cache.accumulated_resid()``. Every score comes with a control:
the same probe trained on permuted training labels and scored on the true ones, so a score means
something only by its margin over the control. Neither TransformerLens nor SAELens trains probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from rlcircuits.analysis import ANALYSES
from rlcircuits.analysis.prompts import CircuitConfig, at_offsets, hooked_arms, split_prompts
from rlcircuits.io import save_figure, write_json
from rlcircuits.registry import check

if TYPE_CHECKING:  # imported where used: see rlcircuits/analysis/__init__.py
    from transformer_lens import HookedTransformer


@torch.no_grad()
def residual_activations(
    model: HookedTransformer, tokens: torch.Tensor, positions: Sequence[int], batch_size: int = 256,
    read_pos: torch.Tensor | None = None,
) -> np.ndarray:
    """Residual stream at ``positions``: [n_layers+1, batch, n_positions, d_model].

    Without ``read_pos`` positions index every row alike (negative counts from the end); with ``read_pos``
    [batch] they are offsets from each row's own read position (right-padded prompts, see ``prompts``).
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size]  # [b, seq]
        _, cache = model.run_with_cache(chunk, names_filter=names)
        resid = cache.accumulated_resid()  # [n_layers+1, b, seq, d_model]; resid_pre l+1 = resid_post l
        if read_pos is None:
            picked = resid[:, :, list(positions)]
        else:
            rows = read_pos[start:start + batch_size]
            picked = torch.stack([at_offsets(layer, rows, positions) for layer in resid])
        chunks.append(picked.float().cpu().numpy())
    return np.concatenate(chunks, axis=1)


def label_kind(labels: np.ndarray) -> str:
    """``"regression"`` for float labels, ``"classification"`` for anything else (ints, bools, strings)."""
    return "regression" if np.issubdtype(np.asarray(labels).dtype, np.floating) else "classification"


ALPHAS = np.logspace(-2, 4, 13)  # ridge penalties searched by leave-one-out cross-validation


def _ridge(kind: str):
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV

    if kind not in ("classification", "regression"):
        raise ValueError(f"probe kind {kind!r}: use 'classification' or 'regression'")
    return RidgeClassifierCV(alphas=ALPHAS) if kind == "classification" else RidgeCV(alphas=ALPHAS)


def score(kind: str, y: np.ndarray, predicted: np.ndarray) -> float:
    """Accuracy (classes) or R² (real labels; for a constant ``y``, 1 if predicted exactly, else 0): what
    scikit-learn's ``score`` returns, without its input checks, which on small probes (a smoke run's 64
    prompts) took more time than the fits."""
    if kind == "classification":
        return float(np.mean(predicted == y))
    residual, total = float(((y - predicted) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return 1.0 - residual / total if total > 0 else float(residual == 0)


def train_probes(
    model: HookedTransformer,
    tokens: Mapping[str, torch.Tensor],
    labels: Mapping[str, Mapping[str, np.ndarray]],
    id_split: str = "id",
    positions: Sequence[int] | None = None,
    kinds: Mapping[str, str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 256,
    read_pos: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Probe every label at every layer × position; train on ID, score on held-out ID and every other split.

    tokens: split → [batch_split, seq_split] token ids; ``tokens[id_split]`` is the training split.
    labels: label name → split → [batch_split] labels. A split missing for a label is not scored.
    positions: sequence positions probed (default: every position of the ID tokens); negative indices
        count from the end, so splits of different lengths are aligned at their ends.
    kinds: label name → "classification" | "regression"; default ``label_kind`` of the ID labels.
    test_fraction: share of ID examples held out for the ID score (its split name is ``id_split``).
    read_pos: split → [batch_split] read positions; ``positions`` are then offsets from them.

    Returns ``{"scores": {label: {split: [n_layers+1, n_positions]}}, "controls": same with permuted
    training labels, "positions": [n_positions], "kinds": {label: kind}}``; scores are accuracy or R².
    """
    from sklearn.preprocessing import StandardScaler

    positions = list(range(tokens[id_split].shape[1])) if positions is None else list(positions)
    acts = {split: residual_activations(model, t, positions, batch_size, None if read_pos is None else read_pos[split])
            for split, t in tokens.items()}
    rng = np.random.default_rng(seed)
    n_id = tokens[id_split].shape[0]
    order = rng.permutation(n_id)
    n_test = max(1, round(test_fraction * n_id))
    test_idx, train_idx = order[:n_test], order[n_test:]

    result: dict = {"scores": {}, "controls": {}, "positions": np.array(positions), "kinds": {}}
    for name, by_split in labels.items():
        kind = (kinds or {}).get(name) or label_kind(by_split[id_split])
        y_id = np.asarray(by_split[id_split])
        y_train, y_shuffled = y_id[train_idx], rng.permutation(y_id[train_idx])
        evals = {id_split: (acts[id_split][:, test_idx], y_id[test_idx])}
        evals |= {s: (acts[s], np.asarray(y)) for s, y in by_split.items() if s != id_split}
        n_layers, n_pos = acts[id_split].shape[0], len(positions)
        scores = {s: np.zeros((n_layers, n_pos)) for s in evals}
        controls = {s: np.zeros((n_layers, n_pos)) for s in evals}
        ends = np.cumsum([len(y) for _, y in evals.values()])[:-1]  # the splits' rows, stacked for one predict
        for layer in range(n_layers):
            for p in range(n_pos):
                scaler = StandardScaler()  # the probe and its control see the same standardised inputs
                x_train = scaler.fit_transform(acts[id_split][layer, train_idx, p])  # [n_train, d_model]
                x_eval = scaler.transform(np.concatenate([x[layer, :, p] for x, _ in evals.values()]))
                for table, targets in ((scores, y_train), (controls, y_shuffled)):
                    predicted = np.split(_ridge(kind).fit(x_train, targets).predict(x_eval), ends)
                    for (s, (_, y)), pred in zip(evals.items(), predicted):
                        table[s][layer, p] = score(kind, y, pred)
        result["scores"][name], result["controls"][name], result["kinds"][name] = scores, controls, kind
    return result


def plot_probes(result: dict, path) -> None:
    """One row per label: the ID split's shuffled-label control, then each split's scores (layer × position);
    one colour scale per row (accuracy for classes, R² clipped at −1 for real labels)."""
    labels = list(result["scores"])
    splits = list(result["scores"][labels[0]])
    id_split = splits[0]
    fig, axes = plt.subplots(len(labels), 1 + len(splits), squeeze=False, sharex=True, sharey=True,
                             figsize=(2.4 * (1 + len(splits)) + 1, 2.0 * len(labels) + 0.5))
    for i, name in enumerate(labels):
        lo = 0.0 if result["kinds"][name] == "classification" else -1.0
        panels = [(f"{id_split} (shuffled labels)", result["controls"][name][id_split])]
        panels += [(s, result["scores"][name][s]) for s in splits if s in result["scores"][name]]
        for ax, (title, scores) in zip(axes[i], panels):
            im = ax.imshow(scores, vmin=lo, vmax=1.0, aspect="auto", origin="lower", cmap="viridis")
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(f"{name}\nlayer (0 = embed)", fontsize=7)
        fig.colorbar(im, ax=axes[i].tolist(), shrink=0.8, label="accuracy" if lo == 0 else "R²")
    for ax in axes[-1]:
        ax.set_xticks(range(len(result["positions"])), result["positions"], fontsize=6)
        ax.set_xlabel("position", fontsize=7)
    save_figure(fig, path)


def best_layer(result: dict, label: str, id_split: str) -> dict:
    """Where ``label`` is best decoded on ID, by margin over the shuffled control, and the scores there.

    Returns ``{"layer", "position", "id_score", "id_control", "margin", <each other split>: its score there}``.
    """
    scores, controls = result["scores"][label], result["controls"][label]
    margin = scores[id_split] - controls[id_split]  # [n_layers+1, n_positions]
    layer, p = np.unravel_index(int(np.argmax(margin)), margin.shape)
    return {"layer": int(layer), "position": int(result["positions"][p]), "id_score": float(scores[id_split][layer, p]),
            "id_control": float(controls[id_split][layer, p]), "margin": float(margin[layer, p]),
            **{s: float(v[layer, p]) for s, v in scores.items() if s != id_split}}


@dataclass
class ProbeConfig(CircuitConfig):
    name: str = "probe"
    # task label (or prefix of a family of labels, e.g. colour_sum → colour_sum_RED, ...) → probe kind
    labels: dict[str, str] = field(default_factory=lambda: {
        "rule": "classification", "colour_sum": "regression", "answer": "regression", "big": "classification"})
    offsets: list[int] = field(default_factory=lambda: [-6, -5, -4, -3, -2, -1, 0])  # from the answer-reading token
    test_fraction: float = 0.25  # ID prompts held out for the ID score

    def __post_init__(self):
        super().__post_init__()
        for label, kind in self.labels.items():
            check(kind in ("classification", "regression"), f"labels.{label}",
                  f"{kind!r} is not one of classification, regression")
        check(all(o <= 0 for o in self.offsets) and self.offsets, "offsets", "need ≥ 1 offset, each ≤ 0")
        check(0 < self.test_fraction < 1, "test_fraction", f"{self.test_fraction} must be in (0, 1)")

    def check_task(self, task_cls) -> None:
        super().check_task(task_cls)
        check(hasattr(task_cls, "probe_labels"), "task", f"{task_cls.__name__} has no probe labels")


def select_labels(found: dict[str, np.ndarray], wanted: dict[str, str]) -> dict[str, str]:
    """Task label name → kind for every label named in ``wanted`` or in a family ``wanted`` prefixes."""
    out = {}
    for name, kind in wanted.items():
        hits = [k for k in found if k == name or k.startswith(f"{name}_")]
        check(bool(hits), f"analysis.probe.labels.{name}", f"the task has no such label; it has {', '.join(found)}")
        out |= {k: kind for k in hits}
    return out


@ANALYSES.register("probe", schema=ProbeConfig)
def run(cfg: ProbeConfig, task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    """Probe every arm; full scores to ``probe.json``, heatmaps per arm, the best ID layer per label as headline."""
    prompts = split_prompts(task, cfg)
    by_split = {s: task.probe_labels(p.examples) for s, p in prompts.items()}
    kinds = select_labels(by_split[cfg.splits[0]], cfg.labels)
    labels = {name: {s: by_split[s][name] for s in prompts} for name in kinds}
    full, headline = {}, {}
    for arm, model in tqdm(hooked_arms(checkpoints).items(), desc="probe", leave=False):
        result = train_probes(model, {s: p.tokens for s, p in prompts.items()}, labels, cfg.splits[0], cfg.offsets,
                              kinds, cfg.test_fraction, cfg.seed, read_pos={s: p.read_pos for s, p in prompts.items()})
        plot_probes(result, out_dir / "plots" / f"probe_{arm}.png")
        full[arm] = result
        headline[arm] = {name: best_layer(result, name, cfg.splits[0]) for name in kinds}
    write_json(out_dir / "analysis" / "probe.json", full)
    return {"probe": headline}

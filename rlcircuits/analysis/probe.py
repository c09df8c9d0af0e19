"""Linear probes on the residual stream, per layer × position, trained on ID and scored on ID and OOD.

What is linearly decodable where, and does it stay decodable out of distribution? One scikit-learn probe
per (label, layer, position): ``LogisticRegression`` for class labels (score: accuracy), ``Ridge`` for real
labels (score: R²). "Layer" 0 is the embedding (``blocks.0.hook_resid_pre``), layer l ≥ 1 is
``blocks.{l-1}.hook_resid_post``, i.e. ``cache.accumulated_resid()``. Every score comes with a control:
the same probe trained on permuted training labels and scored on the true ones, so a score means
something only by its margin over the control. Neither TransformerLens nor SAELens trains probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformer_lens import HookedTransformer

from rlcircuits.io import save_figure


@torch.no_grad()
def residual_activations(
    model: HookedTransformer, tokens: torch.Tensor, positions: Sequence[int], batch_size: int = 256
) -> np.ndarray:
    """Residual stream at ``positions`` (negative counts from the end): [n_layers+1, batch, n_positions, d_model]."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    chunks = []
    for chunk in tokens.split(batch_size):  # [b, seq]
        _, cache = model.run_with_cache(chunk, names_filter=names)
        resid = cache.accumulated_resid()  # [n_layers+1, b, seq, d_model]; resid_pre l+1 = resid_post l
        chunks.append(resid[:, :, list(positions)].float().cpu().numpy())
    return np.concatenate(chunks, axis=1)


def label_kind(labels: np.ndarray) -> str:
    """``"regression"`` for float labels, ``"classification"`` for anything else (ints, bools, strings)."""
    return "regression" if np.issubdtype(np.asarray(labels).dtype, np.floating) else "classification"


def _probe(kind: str, seed: int):
    if kind == "classification":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    if kind == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    raise ValueError(f"probe kind {kind!r}: use 'classification' or 'regression'")


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
) -> dict:
    """Probe every label at every layer × position; train on ID, score on held-out ID and every other split.

    tokens: split → [batch_split, seq_split] token ids; ``tokens[id_split]`` is the training split.
    labels: label name → split → [batch_split] labels. A split missing for a label is not scored.
    positions: sequence positions probed (default: every position of the ID tokens); negative indices
        count from the end, so splits of different lengths are aligned at their ends.
    kinds: label name → "classification" | "regression"; default ``label_kind`` of the ID labels.
    test_fraction: share of ID examples held out for the ID score (its split name is ``id_split``).

    Returns ``{"scores": {label: {split: [n_layers+1, n_positions]}}, "controls": same with permuted
    training labels, "positions": [n_positions], "kinds": {label: kind}}``; scores are accuracy or R².
    """
    positions = list(range(tokens[id_split].shape[1])) if positions is None else list(positions)
    acts = {split: residual_activations(model, t, positions, batch_size) for split, t in tokens.items()}
    rng = np.random.default_rng(seed)
    n_id = tokens[id_split].shape[0]
    order = rng.permutation(n_id)
    n_test = max(1, int(round(test_fraction * n_id)))
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
        for layer in range(n_layers):
            for p in range(n_pos):
                x_train = acts[id_split][layer, train_idx, p]  # [n_train, d_model]
                probe = _probe(kind, seed).fit(x_train, y_train)
                control = _probe(kind, seed).fit(x_train, y_shuffled)
                for s, (x, y) in evals.items():
                    scores[s][layer, p] = probe.score(x[layer, :, p], y)
                    controls[s][layer, p] = control.score(x[layer, :, p], y)
        result["scores"][name], result["controls"][name], result["kinds"][name] = scores, controls, kind
    return result


def plot_probes(result: dict, path) -> None:
    """One row per label, columns = splits then their controls; heatmaps of layer × position."""
    labels = list(result["scores"])
    splits = list(result["scores"][labels[0]])
    fig, axes = plt.subplots(len(labels), 2 * len(splits), squeeze=False, layout="constrained",
                             figsize=(3.2 * 2 * len(splits), 2.6 * len(labels)))
    for i, name in enumerate(labels):
        lo = 0.0 if result["kinds"][name] == "classification" else -1.0
        panels = [(s, result["scores"][name].get(s)) for s in splits]
        panels += [(f"{s} (shuffled)", result["controls"][name].get(s)) for s in splits]
        for ax, (title, scores) in zip(axes[i], panels):
            ax.set_title(f"{name}: {title}", fontsize=8)
            if scores is None:
                ax.axis("off")
                continue
            im = ax.imshow(scores, vmin=lo, vmax=1.0, aspect="auto", origin="lower", cmap="viridis")
            ax.set_xticks(range(len(result["positions"])), result["positions"], fontsize=6)
            ax.set_yticks(range(scores.shape[0]))
            ax.set_xlabel("position", fontsize=7)
            ax.set_ylabel("layer (0 = embed)", fontsize=7)
            fig.colorbar(im, ax=ax)
    save_figure(fig, path)

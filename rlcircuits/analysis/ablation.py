"""Head ablation: how much does each attention head matter for accuracy, per split?

Each head in turn is knocked out by a hook on ``blocks.{l}.attn.hook_z`` that replaces its slice with zeros
(zero-ablation) or with its mean over a reference batch (mean-ablation); importance is the drop in
accuracy. Accuracy is the caller's function of the logits at the read position (e.g. argmax == answer), so
the same code serves every task. Comparing the top-k heads of two splits (or two checkpoints) by Jaccard
overlap asks whether the same circuit is used. TransformerLens gives the hook points, not this sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
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
    from transformer_lens import HookedTransformer

AccuracyFn = Callable[[torch.Tensor], float]  # read-position logits [batch, d_vocab] -> accuracy


def argmax_accuracy(answers: torch.Tensor) -> AccuracyFn:
    """Accuracy function: share of rows whose argmax logit is ``answers`` [batch]."""
    return lambda logits: (logits.argmax(-1) == answers).float().mean().item()


def read_logits(logits: torch.Tensor, read_pos: torch.Tensor | None) -> torch.Tensor:
    """Logits at each row's read position [batch, d_vocab] (default: the last position)."""
    if read_pos is None:
        return logits[:, -1]
    return logits[torch.arange(logits.shape[0]), read_pos]


@torch.no_grad()
def mean_head_outputs(model: HookedTransformer, tokens: torch.Tensor, per_position: bool = True,
                      mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, mean ``hook_z`` over ``tokens`` [batch, seq]: [seq, n_heads, d_head] or [n_heads, d_head].

    mask: [batch, seq], True where a token is real; padding is left out of the mean.
    """
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    weight = torch.ones(tokens.shape) if mask is None else mask.float()  # [batch, seq]
    weight = weight[:, :, None, None]
    dims = (0,) if per_position else (0, 1)
    return [(cache[name] * weight).sum(dims) / weight.sum(dims).clamp_min(1.0) for name in names]


def _replace_head(z: torch.Tensor, hook, head: int, value: torch.Tensor | None) -> torch.Tensor:
    """Hook on ``hook_z`` [batch, seq, n_heads, d_head]: set one head's slice to ``value`` (None = zero)."""
    z = z.clone()
    if value is None:
        z[:, :, head] = 0.0
    elif value.ndim == 3:  # [seq_ref, n_heads, d_head], per position
        if value.shape[0] < z.shape[1]:
            raise ValueError(f"reference batch has {value.shape[0]} positions, prompts have {z.shape[1]}; "
                             "use a longer reference or per_position=False")
        z[:, :, head] = value[: z.shape[1], head]
    else:  # [n_heads, d_head]
        z[:, :, head] = value[head]
    return z


@torch.no_grad()
def head_ablation(
    model: HookedTransformer,
    tokens: Mapping[str, torch.Tensor],
    accuracy: Mapping[str, AccuracyFn],
    method: str = "zero",
    reference: torch.Tensor | None = None,
    per_position: bool = True,
    reference_mask: torch.Tensor | None = None,
    read_pos: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Ablate each head in turn and measure accuracy per split.

    tokens: split → [batch, seq]; accuracy: split → function of read-position logits [batch, d_vocab].
    method: "zero" or "mean"; mean-ablation replaces the head's ``hook_z`` with its mean over ``reference``
        [batch_ref, seq_ref] token ids (per position unless ``per_position=False``, which averages over
        positions too and suits splits longer than the reference); ``reference_mask`` [batch_ref, seq_ref]
        leaves the reference's padding out of the mean.
    read_pos: split → [batch] position whose logits are scored (default: the last one).

    Returns ``{"baseline": {split: float}, "ablated": {split: [n_layers, n_heads]},
    "importance": {split: [n_layers, n_heads]} (= baseline − ablated),
    "logit_change": {split: [n_layers, n_heads]} (mean |Δ| of read-position logits), "method": method}``.
    """
    if method not in ("zero", "mean"):
        raise ValueError(f"ablation method {method!r}: use 'zero' or 'mean'")
    if method == "mean" and reference is None:
        raise ValueError("mean-ablation needs a reference batch of token ids (e.g. the ID prompts)")
    means = mean_head_outputs(model, reference, per_position, reference_mask) if method == "mean" else None
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    result: dict = {"baseline": {}, "ablated": {}, "importance": {}, "logit_change": {}, "method": method}
    for split, toks in tokens.items():
        pos = None if read_pos is None else read_pos[split]
        logits, cache = model.run_with_cache(toks, names_filter=lambda name: name.endswith("hook_resid_pre"))
        clean = read_logits(logits, pos)  # [batch, d_vocab]
        base = accuracy[split](clean)
        ablated, change = np.zeros((n_layers, n_heads)), np.zeros((n_layers, n_heads))
        for layer in range(n_layers):
            resid = cache[f"blocks.{layer}.hook_resid_pre"]  # the layers below a head are not affected by it
            for head in range(n_heads):
                value = None if means is None else means[layer]
                hook = (f"blocks.{layer}.attn.hook_z", partial(_replace_head, head=head, value=value))
                logits = model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[hook])
                logits = read_logits(logits, pos)  # [batch, d_vocab]
                ablated[layer, head] = accuracy[split](logits)
                change[layer, head] = (logits - clean).abs().mean().item()
        result["baseline"][split], result["ablated"][split] = base, ablated
        result["importance"][split], result["logit_change"][split] = base - ablated, change
    return result


def top_k_heads(importance: np.ndarray, k: int) -> set[tuple[int, int]]:
    """The ``k`` (layer, head) pairs of largest importance [n_layers, n_heads]; ties broken by index order."""
    importance = np.asarray(importance)
    flat = np.argsort(-importance, axis=None, kind="stable")[:k]
    return {tuple(int(i) for i in np.unravel_index(f, importance.shape)) for f in flat}


def jaccard(set_a: set, set_b: set) -> float:
    """|A ∩ B| / |A ∪ B|; 1.0 for two empty sets."""
    union = set_a | set_b
    return len(set_a & set_b) / len(union) if union else 1.0


def plot_head_ablation(result: dict, path) -> None:
    """Heatmap of importance (accuracy drop), layers × heads, one panel per split."""
    splits = list(result["importance"])
    fig, axes = plt.subplots(1, len(splits), squeeze=False, layout="constrained",
                             figsize=(3.6 * len(splits), 3.0))
    bound = max(1e-6, max(float(np.abs(result["importance"][s]).max()) for s in splits))
    for ax, split in zip(axes[0], splits):
        im = ax.imshow(result["importance"][split], cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto",
                       origin="lower")
        ax.set_title(f"{split}: acc drop ({result['method']}-ablation)\nbaseline {result['baseline'][split]:.2f}",
                     fontsize=9)
        ax.set_xticks(range(result["importance"][split].shape[1]))
        ax.set_yticks(range(result["importance"][split].shape[0]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)


@dataclass
class AblationConfig(CircuitConfig):
    name: str = "ablation"
    methods: list[str] = field(default_factory=lambda: ["zero", "mean"])
    top_k: int = 3  # size of the important-head sets compared across arms

    def __post_init__(self):
        super().__post_init__()
        for m in self.methods:
            check(m in ("zero", "mean"), "methods", f"{m!r} is not one of zero, mean")
        check(self.top_k >= 1, "top_k", "must be ≥ 1")


@ANALYSES.register("ablation", schema=AblationConfig)
def run(cfg: AblationConfig, task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    """Ablate every head of every arm on every split; the headline is, per split, the Jaccard overlap of the
    top-k heads of each pair of arms (RL vs SFT is the study's question). Mean-ablation uses the ID prompts'
    mean head output over all their real tokens."""
    prompts = split_prompts(task, cfg)
    ref = prompts[cfg.splits[0]]
    full, top = {}, {}
    for arm, model in tqdm(hooked_arms(checkpoints).items(), desc="ablation", leave=False):
        full[arm], top[arm] = {}, {}
        for method in cfg.methods:
            result = head_ablation(model, {s: p.tokens for s, p in prompts.items()},
                                   {s: argmax_accuracy(p.answers) for s, p in prompts.items()}, method,
                                   reference=ref.tokens, per_position=False, reference_mask=ref.mask,
                                   read_pos={s: p.read_pos for s, p in prompts.items()})
            plot_head_ablation(result, out_dir / "plots" / f"ablation_{method}_{arm}.png")
            full[arm][method] = result
            top[arm][method] = {s: sorted(top_k_heads(imp, cfg.top_k)) for s, imp in result["importance"].items()}
    arms = list(top)
    overlap = {f"{a}_vs_{b}": {m: {s: jaccard(set(top[a][m][s]), set(top[b][m][s])) for s in cfg.splits}
                               for m in cfg.methods}
               for i, a in enumerate(arms) for b in arms[i + 1:]}
    write_json(out_dir / "analysis" / "ablation.json", {"results": full, "top_heads": top, "jaccard": overlap})
    return {"ablation": {"jaccard": overlap, "top_heads": top}}

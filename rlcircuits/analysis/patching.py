"""Activation patching: which activations carry the information that decides the answer?

Runs the corrupt prompts while patching in one clean activation at a time (TransformerLens'
``generic_activation_patch`` and its setters) and measures the logit difference at the final position,
``logit[clean answer] − logit[corrupt answer]`` (mean over the batch), normalised so that
1 = the clean run's value and 0 = the corrupt run's. Clean and corrupt prompts are paired row by row and
must have equal length. Residual "layer" 0 is the embedding (``blocks.0.hook_resid_pre``) and layer
l ≥ 1 is ``blocks.{l-1}.hook_resid_post``, as in ``probe``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from rlcircuits.analysis import ANALYSES
from rlcircuits.analysis.prompts import CircuitConfig, Prompts, answer_logits, hooked_arms, pad
from rlcircuits.io import save_figure, write_json
from rlcircuits.registry import check

if TYPE_CHECKING:  # imported where used: see rlcircuits/analysis/__init__.py
    from transformer_lens import HookedTransformer


def logit_diff(logits: torch.Tensor, clean_answers: torch.Tensor, corrupt_answers: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of final-position ``logit[clean] − logit[corrupt]``; logits [batch, seq, d_vocab]."""
    final = logits[:, -1]  # [batch, d_vocab]
    rows = torch.arange(final.shape[0])
    return (final[rows, clean_answers] - final[rows, corrupt_answers]).mean()


def normalised_logit_diff(logits: torch.Tensor, clean_answers: torch.Tensor, corrupt_answers: torch.Tensor,
                          clean_value: float, corrupt_value: float) -> torch.Tensor:
    """``logit_diff`` rescaled so that ``clean_value`` ↦ 1 and ``corrupt_value`` ↦ 0."""
    return (logit_diff(logits, clean_answers, corrupt_answers) - corrupt_value) / (clean_value - corrupt_value)


@torch.no_grad()
def patch(
    model: HookedTransformer,
    clean_tokens: torch.Tensor,
    corrupt_tokens: torch.Tensor,
    clean_answers: torch.Tensor,
    corrupt_answers: torch.Tensor,
    patcher: Callable[..., torch.Tensor],
    axes: tuple[str, str],
) -> dict:
    """Run ``patcher(model, corrupt_tokens, clean_cache, metric)`` with the normalised logit-diff metric.

    clean_tokens, corrupt_tokens: [batch, seq] paired prompts; clean_answers, corrupt_answers: [batch] ids.
    patcher: one of the ``get_act_patch_*`` functions below (or from ``transformer_lens.patching``)
        returning a 2-d array; axes: the names of its two axes, for plots.
    Returns ``{"patched": patcher's array, "axes": axes, "clean_logit_diff": float,
    "corrupt_logit_diff": float}``.
    """
    if clean_tokens.shape != corrupt_tokens.shape:
        raise ValueError(f"clean {tuple(clean_tokens.shape)} and corrupt {tuple(corrupt_tokens.shape)} "
                         "prompts must be paired and of equal length")
    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_value = logit_diff(clean_logits, clean_answers, corrupt_answers).item()
    corrupt_value = logit_diff(model(corrupt_tokens), clean_answers, corrupt_answers).item()
    if abs(clean_value - corrupt_value) < 1e-6:
        raise ValueError(f"clean and corrupt logit differences are equal ({clean_value:.4g}): "
                         "the metric cannot be normalised; the pair must change the answer")
    metric = partial(normalised_logit_diff, clean_answers=clean_answers, corrupt_answers=corrupt_answers,
                     clean_value=clean_value, corrupt_value=corrupt_value)
    patched = patcher(model, corrupt_tokens, clean_cache, metric)
    return {"patched": patched.cpu().numpy(), "axes": axes,
            "clean_logit_diff": clean_value, "corrupt_logit_diff": corrupt_value}


def get_act_patch_resid(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
    """Patch the residual stream at each layer × position: [n_layers+1, seq] (row 0 = embedding)."""
    import pandas as pd
    from transformer_lens import patching as tlp

    embed = tlp.generic_activation_patch(
        model, corrupted_tokens, clean_cache, patching_metric, tlp.layer_pos_patch_setter, "resid_pre",
        index_df=pd.DataFrame({"layer": 0, "pos": range(corrupted_tokens.shape[1])}),
    )  # [seq]
    post = tlp.generic_activation_patch(
        model, corrupted_tokens, clean_cache, patching_metric, tlp.layer_pos_patch_setter, "resid_post",
        index_axis_names=("layer", "pos"),
    )  # [n_layers, seq]
    return torch.cat([embed[None], post])


def get_act_patch_head_out_final_pos(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
    """Patch each head's output (``attn.hook_z``) at the final position only: [n_layers, n_heads]."""
    import pandas as pd
    from transformer_lens import patching as tlp

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    index = pd.DataFrame([(layer, corrupted_tokens.shape[1] - 1, h) for layer in range(n_layers) for h in range(n_heads)],
                         columns=["layer", "pos", "head"])
    flat = tlp.generic_activation_patch(
        model, corrupted_tokens, clean_cache, patching_metric, tlp.layer_pos_head_vector_patch_setter, "z",
        index_df=index,
    )  # [n_layers * n_heads]
    return flat.reshape(n_layers, n_heads)


patch_resid = partial(patch, patcher=get_act_patch_resid, axes=("layer (0 = embed)", "position"))
patch_resid.__doc__ = "``patch`` of the residual stream: ``patched`` is [n_layers+1, seq] (row 0 = embedding)."
def get_act_patch_head_out_all_pos(model, corrupted_tokens, clean_cache, patching_metric) -> torch.Tensor:
    """Patch each head's output at every position at once: [n_layers, n_heads] (TransformerLens' own)."""
    from transformer_lens import patching as tlp

    return tlp.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, patching_metric)


patch_heads_all_pos = partial(patch, patcher=get_act_patch_head_out_all_pos, axes=("layer", "head"))
patch_heads_all_pos.__doc__ = ("``patch`` of each head's output at every position at once: ``patched`` is "
                               "[n_layers, n_heads].")
patch_heads_final_pos = partial(patch, patcher=get_act_patch_head_out_final_pos, axes=("layer", "head"))
patch_heads_final_pos.__doc__ = ("``patch`` of each head's output at the final position only: ``patched`` is "
                                 "[n_layers, n_heads].")


def plot_patching(results: dict[str, dict], path, ncols: int | None = None) -> None:
    """One heatmap per named result of ``patch_*`` (e.g. {"resid": ..., "heads (all pos)": ...}), ``ncols``
    to a row (default: all in one row)."""
    ncols = ncols or len(results)
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained", figsize=(4.2 * ncols, 3.4 * nrows))
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    for ax, (title, result) in zip(axes.flat, results.items()):
        values = np.asarray(result["patched"])
        bound = max(1.0, float(np.abs(values).max()))
        im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", origin="lower")
        ax.set_yticks(range(values.shape[0]))
        ax.set_ylabel(result["axes"][0])
        ax.set_xlabel(result["axes"][1])
        ax.set_title(f"{title}\n1 = clean, 0 = corrupt", fontsize=9)
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)


@dataclass
class PatchingConfig(CircuitConfig):
    """``splits``: the OOD splits, each paired with ID test prompts by ``task.pairs``."""

    name: str = "patching"
    splits: list[str] = field(default_factory=lambda: ["ood_colour", "ood_composition", "ood_paraphrase",
                                                       "ood_threshold"])
    max_pairs: int = 64  # pairs patched per split and arm
    min_pairs: int = 4  # fewer usable pairs than this: the split is reported as skipped

    def __post_init__(self):
        super().__post_init__()
        check(1 <= self.min_pairs <= self.max_pairs, "min_pairs", f"must be in 1..max_pairs={self.max_pairs}")

    def check_task(self, task_cls) -> None:
        super().check_task(task_cls)
        for s in self.splits:
            check(s in task_cls.paired_splits, "splits", f"{s!r} has no ID twins to patch from; valid: "
                  f"{', '.join(task_cls.paired_splits) or 'none (the task pairs no splits)'}")


def usable_pairs(model: HookedTransformer, clean: Prompts, corrupt: Prompts, max_pairs: int) -> torch.Tensor:
    """Rows to patch: the model gives the ID answer on the clean prompt but not on its OOD twin, and (prompts
    of one batch must have one length) the prompt length is the most common among such rows."""
    corrupt_pred = answer_logits(model, corrupt).argmax(-1)  # [n]
    ok = (answer_logits(model, clean).argmax(-1) == clean.answers) & (corrupt_pred != clean.answers)
    rows = torch.nonzero(ok).flatten()
    if len(rows) == 0:
        return rows
    lengths = clean.read_pos[rows]
    return rows[lengths == torch.mode(lengths).values][:max_pairs]


@ANALYSES.register("patching", schema=PatchingConfig)
def run(cfg: PatchingConfig, task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    """Patch each arm's ID activations into its failing OOD twins: which layer, position and head restore the
    ID answer? The corrupt answer of a pair is the model's own OOD answer, so the logit difference measures
    the switch between the two answers it actually gives."""
    pad_id = task.tokenizer.pad_token_id
    pairs = {s: task.pairs(s, cfg.n_examples, cfg.seed) for s in cfg.splits}
    full, headline = {}, {}
    for arm, model in tqdm(hooked_arms(checkpoints).items(), desc="patching", leave=False):
        full[arm], headline[arm], panels, heads_panels = {}, {}, {}, {}
        for split, twins in pairs.items():
            clean, corrupt = pad([a for a, _ in twins], pad_id), pad([b for _, b in twins], pad_id)
            rows = usable_pairs(model, clean, corrupt, cfg.max_pairs)
            if len(rows) < cfg.min_pairs:
                headline[arm][split] = {"n_pairs": len(rows), "skipped": f"fewer than min_pairs={cfg.min_pairs} "
                                        "pairs where the ID answer is right and the OOD answer differs"}
                continue
            clean, corrupt = clean.subset(rows), corrupt.subset(rows)
            corrupt_answers = answer_logits(model, corrupt).argmax(-1)
            args = (model, clean.tokens, corrupt.tokens, clean.answers, corrupt_answers)
            resid, heads = patch_resid(*args), patch_heads_all_pos(*args)
            panels[f"{split}: residual"], heads_panels[f"{split}: heads"] = resid, heads
            full[arm][split] = {"resid": resid, "heads": heads, "rows": rows}
            layer, head = np.unravel_index(int(np.argmax(heads["patched"])), heads["patched"].shape)
            headline[arm][split] = {"n_pairs": len(rows), "length": clean.tokens.shape[1],
                                    "clean_logit_diff": resid["clean_logit_diff"],
                                    "corrupt_logit_diff": resid["corrupt_logit_diff"],
                                    "top_head": [int(layer), int(head)],
                                    "top_head_restored": float(heads["patched"][layer, head])}
        if panels:  # residual maps on the first row, head maps on the second
            plot_patching(panels | heads_panels, out_dir / "plots" / f"patching_{arm}.png", ncols=len(panels))
    write_json(out_dir / "analysis" / "patching.json", full)
    return {"patching": headline}

"""Direct logit attribution: how much each head (and every other component) writes a target logit directly.

The final residual stream is a sum of components — token and position embeddings, each head's output
(``cache.stack_head_results``), each layer's attention bias ``b_O``, each MLP (``cache.decompose_resid``).
Passed through the final LayerNorm with the run's own scale (``cache.apply_ln_to_stack``) and projected on
the target's unembedding direction, each component gets a share of the logit (or of a logit difference
``target − baseline``); with the LayerNorm and unembedding biases as one more term, the shares sum exactly
to the model's logit difference. Our models keep LayerNorm unfolded (see ``rlcircuits.models.hooked``), so
the ``ln_final`` weight is applied to the unembedding directions here rather than folded into ``W_U``.
Used to compare which heads push a token (e.g. a sentiment word) in a base vs a tuned model.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch

from rlcircuits.io import save_figure

if TYPE_CHECKING:  # imported where used: see rlcircuits/analysis/__init__.py
    from transformer_lens import HookedTransformer


@torch.no_grad()
def head_attribution(
    model: HookedTransformer,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    baselines: torch.Tensor | None = None,
    read_pos: torch.Tensor | None = None,
    batch_size: int = 16,
) -> dict:
    """Attribute ``logit[target] − logit[baseline]`` at each row's read position to model components.

    tokens: [batch, seq]; targets, baselines: [batch] token ids (no baseline: attribute the target logit
    itself); read_pos: [batch] (default: last position). Memory per chunk grows as
    batch_size · seq · n_heads · d_head · d_model (TransformerLens' head-result computation): keep
    ``batch_size`` small for wide models.

    Returns arrays over rows: ``heads`` [batch, n_layers, n_heads], ``mlp`` and ``attn_bias``
    [batch, n_layers], ``embed``, ``pos_embed``, ``final_bias`` (ln_final and unembedding biases) and
    ``logit_diff`` (the model's own value) [batch]. All components sum to ``logit_diff``.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    read_pos = torch.full((tokens.shape[0],), tokens.shape[1] - 1) if read_pos is None else read_pos
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_scale"]
    names += [f"blocks.{layer}.{h}" for layer in range(n_layers) for h in ("attn.hook_z", "hook_mlp_out")]
    w_ln, b_ln = model.ln_final.w, model.ln_final.b  # [d_model]
    b_o = torch.stack([block.attn.b_O for block in model.blocks])  # [n_layers, d_model]
    chunks = zip(tokens.split(batch_size), targets.split(batch_size), read_pos.split(batch_size),
                 baselines.split(batch_size) if baselines is not None else repeat(None))
    parts = []
    for chunk, tgt, pos, base in chunks:
        rows = torch.arange(chunk.shape[0])
        direction = model.W_U[:, tgt] - (0 if base is None else model.W_U[:, base])  # [d_model, b]
        bias = model.b_U[tgt] - (0 if base is None else model.b_U[base])  # [b]
        logits, cache = model.run_with_cache(chunk, names_filter=names)  # [b, seq, d_vocab]
        comps = torch.cat([
            cache.decompose_resid(mode="mlp"),  # [2 + n_layers, b, seq, d_model]: embeddings, MLPs
            b_o[:, None, None].expand(-1, *chunk.shape, -1),  # [n_layers, b, seq, d_model]
            cache.stack_head_results(),  # [n_layers * n_heads, b, seq, d_model]
        ])
        normed = torch.zeros(comps.shape[0], chunk.shape[0], model.cfg.d_model)  # [n_comp, b, d_model]
        for p in pos.unique().tolist():
            sel = (pos == p).nonzero().squeeze(1)  # rows read at position p
            normed[:, sel] = cache.apply_ln_to_stack(comps[:, :, p], pos_slice=p, batch_slice=sel) * w_ln
        attr = torch.einsum("cbd,db->cb", normed, direction)  # [n_comp, b]
        final = logits[rows, pos]  # [b, d_vocab]
        parts.append({
            "embed": attr[0], "pos_embed": attr[1],
            "mlp": attr[2:2 + n_layers].T, "attn_bias": attr[2 + n_layers:2 + 2 * n_layers].T,
            "heads": attr[2 + 2 * n_layers:].T.reshape(-1, n_layers, n_heads),
            "final_bias": b_ln @ direction + bias,
            "logit_diff": final[rows, tgt] - (0 if base is None else final[rows, base]),
        })
    return {key: torch.cat([p[key] for p in parts]).numpy() for key in parts[0]}


def plot_head_attribution(results: dict[str, dict], path) -> None:
    """Mean head attribution (layers × heads) per named result, e.g. {"base": ..., "tuned": ...}, one scale."""
    means = {name: r["heads"].mean(0) for name, r in results.items()}  # [n_layers, n_heads]
    bound = max(1e-6, max(float(np.abs(m).max()) for m in means.values()))
    fig, axes = plt.subplots(1, len(means), squeeze=False, layout="constrained",
                             figsize=(3.6 * len(means), 3.0))
    for ax, (name, mean) in zip(axes[0], means.items()):
        im = ax.imshow(mean, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", origin="lower")
        ax.set_title(f"{name}: direct logit attribution\nmean logit diff {results[name]['logit_diff'].mean():.2f}",
                     fontsize=9)
        ax.set_xticks(range(mean.shape[1]))
        ax.set_yticks(range(mean.shape[0]))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)

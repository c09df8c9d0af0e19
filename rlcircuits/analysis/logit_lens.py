"""Logit lens: decode the residual stream after each layer through the final LayerNorm and unembedding.

Where in depth does the answer (or the next token) become readable? ``cache.accumulated_resid(apply_ln=True)``
gives the residual stream before each layer and after the last, each passed through ``ln_final`` with its
own statistics; ``model.unembed`` maps it to logits, so the last layer's decoding is exactly the model's
output. Generic over tasks: callers give token ids, the position to read in each row and target ids.
"""

from __future__ import annotations

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
    from transformer_lens import HookedTransformer


@torch.no_grad()
def layer_logits(model: HookedTransformer, tokens: torch.Tensor, read_pos: torch.Tensor | None = None,
                 batch_size: int = 256) -> torch.Tensor:
    """Logits decoded from each layer's residual stream at each row's read position.

    tokens: [batch, seq]; read_pos: [batch] (default: last position). Layer 0 is the embedding, layer l
    the output of block l-1. Returns [n_layers+1, batch, d_vocab].
    """
    read_pos = torch.full((tokens.shape[0],), tokens.shape[1] - 1) if read_pos is None else read_pos
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    names += [f"blocks.{n_layers - 1}.hook_resid_post"]
    out = []
    for chunk, pos in zip(tokens.split(batch_size), read_pos.split(batch_size)):
        _, cache = model.run_with_cache(chunk, names_filter=names)
        resid = cache.accumulated_resid(apply_ln=True)  # [n_layers+1, b, seq, d_model]
        resid = resid[:, torch.arange(chunk.shape[0]), pos]  # [n_layers+1, b, d_model]
        out.append(model.unembed(resid))  # [n_layers+1, b, d_vocab]
    return torch.cat(out, dim=1)


def logit_lens(model: HookedTransformer, tokens: torch.Tensor, targets: torch.Tensor,
               read_pos: torch.Tensor | None = None, batch_size: int = 256) -> dict:
    """Per layer, how well the decoded residual stream predicts ``targets`` [batch] at ``read_pos`` [batch].

    Returns ``{"accuracy": [n_layers+1] (argmax == target), "log_prob": [n_layers+1] (mean log-prob of the
    target), "per_example_log_prob": [n_layers+1, batch]}``; index 0 is the embedding.
    """
    read_pos = torch.full((tokens.shape[0],), tokens.shape[1] - 1) if read_pos is None else read_pos
    logps, hits = [], []
    for chunk, tgt, pos in zip(tokens.split(batch_size), targets.split(batch_size), read_pos.split(batch_size)):
        logits = layer_logits(model, chunk, pos, batch_size)  # [n_layers+1, b, d_vocab]
        logps.append(logits.log_softmax(-1)[:, torch.arange(tgt.shape[0]), tgt])  # [n_layers+1, b]
        hits.append(logits.argmax(-1) == tgt)  # [n_layers+1, b]
    logp = torch.cat(logps, dim=1)  # [n_layers+1, batch]
    accuracy = torch.cat(hits, dim=1).float().mean(1)  # [n_layers+1]
    return {"accuracy": accuracy.numpy(), "log_prob": logp.mean(1).numpy(), "per_example_log_prob": logp.numpy()}


def first_decodable_layer(acc_per_layer: np.ndarray, threshold: float) -> int | None:
    """The first layer whose accuracy reaches ``threshold`` (0 = embedding), or None if none does."""
    hits = np.flatnonzero(np.asarray(acc_per_layer) >= threshold)
    return int(hits[0]) if hits.size else None


def plot_logit_lens(results: dict[str, dict], path) -> None:
    """Accuracy and mean target log-prob per layer, one line per named result (e.g. split or checkpoint)."""
    fig, (ax_acc, ax_lp) = plt.subplots(1, 2, layout="constrained", figsize=(9, 3.4))
    for name, result in results.items():
        layers = np.arange(len(result["accuracy"]))
        ax_acc.plot(layers, result["accuracy"], marker="o", label=name)
        ax_lp.plot(layers, result["log_prob"], marker="o", label=name)
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_ylabel("accuracy (argmax = target)")
    ax_lp.set_ylabel("mean log-prob of target")
    for ax in (ax_acc, ax_lp):
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = embed)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


@dataclass
class LogitLensConfig(CircuitConfig):
    name: str = "logit_lens"
    threshold: float = 0.5  # accuracy at which the answer counts as decodable from a layer

    def __post_init__(self):
        super().__post_init__()
        check(0 < self.threshold <= 1, "threshold", f"{self.threshold} must be in (0, 1]")


@ANALYSES.register("logit_lens", schema=LogitLensConfig)
def run(cfg: LogitLensConfig, task, checkpoints: dict[str, Path], out_dir: Path) -> dict:
    """Decode the answer from every layer of every arm on every split; headline: the first decodable layer
    (null: none reaches ``threshold``) and the final layer's accuracy."""
    prompts = split_prompts(task, cfg)
    full, headline = {}, {}
    for arm, model in tqdm(hooked_arms(checkpoints).items(), desc="logit_lens", leave=False):
        full[arm] = {s: logit_lens(model, p.tokens, p.answers, p.read_pos) for s, p in prompts.items()}
        for r in full[arm].values():
            del r["per_example_log_prob"]
        plot_logit_lens(full[arm], out_dir / "plots" / f"logit_lens_{arm}.png")
        headline[arm] = {s: {"first_layer": first_decodable_layer(r["accuracy"], cfg.threshold),
                             "final_accuracy": float(r["accuracy"][-1])} for s, r in full[arm].items()}
    write_json(out_dir / "analysis" / "logit_lens.json", full)
    return {"logit_lens": headline}

"""Does the base give RL a way in to a parity reward? The correlation of its features with the parity.

    python benchmarks/toy_kl_parity_features.py outputs/<date>/<time> [more runs…]

Under a parity reward (`even`, `odd`) π* differs from the base inside a coin-flip branch only at the last
bit, whose optimal odds depend on the parity χ of the bits before it. RL's gradient toward that is the
correlation between χ and the features the last position's logits are made of (docs/toy_kl.md, *Why
parity stalls*): if none correlates, RL reweights the branches and stops. For each run's base and policy
this prints, over every prefix of each coin-flip branch, the largest |corr(feature, χ)| among the last
position's residual-stream dimensions after each block and its MLP hidden units, the last-bit log-odds'
|correlation| with χ (near 1 once RL has learned the parity), and how much the last position reads the bit
it reads least (0: it ignores one, and every one of its features is then exactly uncorrelated with χ).
"""

import argparse
import itertools
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from rlcircuits.pipeline import build_spec, load_results
from rlcircuits.tasks import TASKS


def max_abs_corr(features: torch.Tensor, chi: torch.Tensor) -> float:
    """Largest |Pearson correlation| of any column of ``features`` [N, D] with ``chi`` [N] (a constant
    column counts as 0)."""
    x = features - features.mean(0)
    corr = (x * (chi - chi.mean())[:, None]).mean(0) / (x.std(0, unbiased=False) * chi.std(unbiased=False))
    return corr.nan_to_num().abs().max().item()


@torch.no_grad()
def parity_features(model, task, branch: str) -> dict[str, float]:
    """The correlations described above for one model and one coin-flip branch."""
    prefixes = ["".join(bits) for bits in itertools.product("01", repeat=task.cfg.n_bits - 1)]
    ids = torch.tensor([[task.tokenizer.bos_token_id, *task.encode(branch, bits)] for bits in prefixes])
    chi = torch.tensor([(-1.0) ** bits.count("1") for bits in prefixes])
    hidden = []
    hooks = [block.mlp.act.register_forward_hook(lambda _m, _i, out: hidden.append(out[:, -1]))
             for block in model.transformer.h]
    out = model(ids, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    one, zero = task.tokenizer.convert_tokens_to_ids(["1", "0"])
    row = {f"resid {i}": max_abs_corr(h[:, -1], chi) for i, h in enumerate(out.hidden_states[1:], 1)}
    row |= {f"mlp {i}": max_abs_corr(h, chi) for i, h in enumerate(hidden, 1)}
    log_odds = out.logits[:, -1, one] - out.logits[:, -1, zero]
    row["last-bit log-odds"] = max_abs_corr(log_odds[:, None], chi)
    row["least-read bit"] = least_read_bit(out.hidden_states[-1][:, -1])
    return row


def least_read_bit(final: torch.Tensor) -> float:
    """How much the last position's final hidden state ``final`` [2^k, D] (rows in ``itertools.product``
    order) moves when one bit of the prefix is flipped, for the bit that moves it least: the mean distance
    between the rows of prefixes that differ in that bit, over the rows' mean distance from their mean.
    Near 0 means the last position ignores a bit, and then every feature it has is exactly uncorrelated
    with the parity of all of them."""
    n, index = final.shape[0], torch.arange(final.shape[0])
    spread = (final - final.mean(0)).norm(dim=1).mean()
    moves = [(final - final[index ^ (1 << j)]).norm(dim=1).mean() for j in range(n.bit_length() - 1)]
    return (min(moves) / spread).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished toy_kl run folders")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        spec = build_spec(OmegaConf.load(Path(run) / ".hydra" / "config.yaml"))
        task = TASKS.get(spec.task.name).fn(spec.task)
        results = load_results(run)
        for arm in ("base", "policy"):
            model = AutoModelForCausalLM.from_pretrained(results["checkpoints"][arm]).eval()
            for branch, cfg in spec.task.branches.items():
                if cfg.pattern == "random":
                    row = parity_features(model, task, branch)
                    print(f"{run} {arm:<6} branch {branch}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()

"""Sampling completions from a policy and scoring their tokens: the part every RL trainer shares.

Prompts are left-padded so that all completions start at the same column; positions are taken from the
attention mask, so a left-padded row sees the same positions as the unpadded sequence did in SFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlcircuits.models.hf import is_adapter
from rlcircuits.models.softmax import log_softmax
from rlcircuits.tasks.base import Example


@dataclass
class Rollout:
    """A batch of sampled completions. B rows, P prompt columns, C completion columns."""

    sequences: torch.Tensor  # [B, P + C] left-padded prompt, completion, <eos> repeated after the first
    attention_mask: torch.Tensor  # [B, P + C] 1 on real tokens
    completion_mask: torch.Tensor  # [B, C] 1 on completion tokens up to and including <eos>
    prompt_len: int  # P

    def __getitem__(self, rows) -> Rollout:
        """The rollout restricted to ``rows`` (an index tensor or slice), e.g. a PPO minibatch."""
        return Rollout(self.sequences[rows], self.attention_mask[rows], self.completion_mask[rows], self.prompt_len)

    @property
    def completions(self) -> list[list[int]]:
        """Completion ids per row, without padding."""
        lengths = self.completion_mask.sum(1).tolist()  # the mask is 1 on a prefix of each row
        return [row[:n] for row, n in zip(self.sequences[:, self.prompt_len :].tolist(), lengths)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids [B, P]`` and ``mask [B, P]`` of left-padded prompts."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, ``[B, T]``."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _padding(model, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, padded: bool) -> dict:
    """Model kwargs for left-padded rows; none without padding, which lets the model take its fast causal path
    — unless a <pad> the policy sampled itself (a real token here) sits in the first or last column of
    ``ids``, where transformers would warn that the pass may need a mask: the mask says it does not."""
    pad = model.config.pad_token_id
    if padded or (pad is not None and bool((ids[:, [0, -1]] == pad).any())):
        return {"attention_mask": mask, "position_ids": pos}
    return {}


@torch.no_grad()
def sample(model, examples: list[Example], tokenizer, max_new_tokens: int, greedy: bool = False) -> Rollout:
    """Sample one completion per example (repeat examples for several per prompt).

    Plain ancestral sampling from the softmax of the logits (no temperature, top-k or top-p), decoded with
    a KV cache in a loop of our own: on the small models here ``generate``'s per-token bookkeeping cost
    more than the model itself. The prompt pass runs once per distinct prompt and its cache is copied to
    each row: RL repeats every prompt ``num_generations`` times, and on cards_sft_vs_rl (16 prompts × 8)
    that pass was 104 of a step's 108 ms of sampling. Rows that emitted <eos> repeat it (masked out) until
    all have: padding them with <pad> would have transformers warn, on every unmasked pass, that the input
    may need a mask.
    """
    device = next(model.parameters()).device
    prompts = [tuple(e.prompt) for e in examples]
    distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # prompt → its row in the prompt pass
    inverse = torch.tensor([distinct[p] for p in prompts], device=device)  # [B]
    ids, mask = left_pad(list(distinct), tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)  # [U, P]
    was_training = model.training
    model.eval()
    padded = not bool(mask.all())  # without left padding the model's own causal mask and positions are right
    pos = positions(mask)
    out = model(ids, **_padding(model, ids, mask, pos, padded), use_cache=True)
    cache, logits = out.cache, out.logits[inverse, -1]  # [B, V]
    if len(distinct) < len(prompts):
        cache.reorder_cache(inverse)
    ids, mask, pos = ids[inverse], mask[inverse], pos[inverse, -1:]  # [B, P], [B, P], [B, 1]
    attn = mask
    done = torch.zeros(len(examples), dtype=torch.bool, device=device)
    tokens = []
    for _ in range(max_new_tokens):
        logits = logits.float()
        if greedy:
            tok = logits.argmax(-1)
        else:  # weights ∝ softmax (multinomial normalises), without torch.softmax's slow path on short rows
            tok = torch.multinomial((logits - logits.amax(-1, keepdim=True)).exp(), 1).squeeze(-1)
        tok = tok.masked_fill(done, tokenizer.eos_token_id)  # [B]
        tokens.append(tok)
        done |= tok == tokenizer.eos_token_id
        if done.all() or len(tokens) == max_new_tokens:  # no pass for a token that will not be sampled
            break
        pos, attn = pos + 1, torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
        step = tok[:, None]
        out = model(step, **_padding(model, step, attn, pos, padded), cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
    model.train(was_training)
    comp = torch.stack(tokens, 1)  # [B, C]
    is_eos = comp == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first <eos>
    comp_mask = (~after_eos).long()
    return Rollout(torch.cat([ids, comp], 1), torch.cat([mask, comp_mask], 1), comp_mask, ids.shape[1])


@dataclass
class Scores:
    """A model's view of a rollout's completion tokens; C completion columns, D hidden width."""

    logp: torch.Tensor  # [B, C] log-probability of each sampled token (0 on padding)
    entropy: torch.Tensor | None = None  # [B, C] entropy of the next-token distribution
    hidden: torch.Tensor | None = None  # [B, C, D] final hidden state at the position that predicts each token
    dist: torch.Tensor | None = None  # [B, C, V] log-probabilities of the whole next-token distribution


def score(model, rollout: Rollout, entropy: bool = False, hidden: bool = False, dist: bool = False) -> Scores:
    """Score ``rollout``'s completion tokens under ``model`` (with grad unless called under no_grad).

    Identical rows are scored once and their scores shared (their gradients then add up, as they would):
    toy_kl's 512 samples a step hold ~100 distinct sequences, and the forward and backward pass costs ~3×
    less on those. With dropout on, duplicates share one dropout mask.
    """
    rows = torch.cat([rollout.sequences, rollout.attention_mask], 1)
    distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(distinct) == len(rows):
        return _score(model, rollout, entropy, hidden, dist)
    first = torch.full((len(distinct),), len(rows), device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), "amin")  # a row of each
    found = _score(model, rollout[first], entropy, hidden, dist)
    return Scores(*(None if x is None else x[inverse] for x in (found.logp, found.entropy, found.hidden, found.dist)))


def _score(model, rollout: Rollout, entropy: bool, hidden: bool, dist: bool) -> Scores:
    P = rollout.prompt_len
    mask = rollout.attention_mask
    # What follows the first <eos> is only ever read by what follows it, so only left padding needs the mask.
    padded = not bool(mask[:, :P].all())
    ids = rollout.sequences
    kwargs = _padding(model, ids, mask, positions(mask), padded)
    out = model(ids, **kwargs, output_hidden_states=hidden, use_cache=False)
    logits = out.logits[:, P - 1 : -1].float()  # [B, C, V]: position t predicts completion token t
    logp = log_softmax(logits)
    tok = logp.gather(-1, rollout.sequences[:, P:, None]).squeeze(-1) * rollout.completion_mask  # [B, C]
    return Scores(
        logp=tok,
        entropy=-(logp.exp() * logp).sum(-1) if entropy else None,
        hidden=out.hidden_states[-1][:, P - 1 : -1] if hidden else None,
        dist=logp if dist else None,
    )


def token_logprobs(model, rollout: Rollout) -> torch.Tensor:
    """Log-probability of each completion token under ``model``, ``[B, C]`` (0 on padding)."""
    return score(model, rollout).logp


@torch.no_grad()
def reference_scores(policy, reference, rollout: Rollout, dist: bool = False) -> Scores:
    """``score`` under the reference policy (``dist``: with its whole next-token distributions).

    The reference is ``reference`` when given; ``None`` means the policy is a PEFT (LoRA) model whose
    reference is itself with the adapter disabled — no second copy of the weights in memory.
    """
    if reference is not None:
        return score(reference, rollout, dist=dist)
    if not is_adapter(policy):
        raise ValueError("reference=None needs a PEFT policy (the reference is the policy with its adapter disabled)")
    was_training = policy.training
    policy.eval()
    with policy.disable_adapter():
        scores = score(policy, rollout, dist=dist)
    policy.train(was_training)
    return scores


def reference_logprobs(policy, reference, rollout: Rollout) -> torch.Tensor:
    """``token_logprobs`` under the reference policy, ``[B, C]`` (see ``reference_scores``)."""
    return reference_scores(policy, reference, rollout).logp

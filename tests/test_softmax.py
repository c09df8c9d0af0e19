"""The short-row softmax and the ``exp_softmax`` attention against PyTorch's own: same values, same
gradients, with padding and with a KV cache."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.models.softmax import NAME, log_softmax, softmax


@pytest.mark.parametrize("width", [1, 2, 8, 15, 16, 40])
def test_softmax_equals_torch(width):
    x = torch.randn(64, 3, width) * 10
    x[0, 0, 0] = torch.finfo(x.dtype).min  # an additively masked entry
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1))
    torch.testing.assert_close(log_softmax(x), torch.log_softmax(x, -1))


@pytest.fixture(scope="module")
def pair():
    """The same random GPT-2 with sdpa and with exp_softmax attention."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=8, n_positions=12, n_embd=6, n_layer=2, n_head=3, n_inner=4, pad_token_id=0)
    sdpa = GPT2LMHeadModel(config).eval()
    fast = copy.deepcopy(sdpa)
    fast.set_attn_implementation(NAME)
    return sdpa, fast


def test_attention_equals_sdpa_with_left_padding_and_grads(pair):
    sdpa, fast = pair
    ids = torch.randint(1, 8, (5, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = mask[3, :6] = 0  # left padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = [m(ids, attention_mask=mask, position_ids=pos).logits for m in pair]
    torch.testing.assert_close(out[1] * mask[..., None], out[0] * mask[..., None])
    for logits in out:
        (logits * mask[..., None]).pow(2).sum().backward()
    for p, q in zip(sdpa.parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_attention_equals_sdpa_with_a_kv_cache(pair):
    ids = torch.randint(1, 8, (4, 9))
    logits = []
    for model in pair:
        out = model(ids[:, :3], use_cache=True)
        steps = [out.logits]
        for t in range(3, 9):
            out = model(ids[:, t:t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
        logits.append(torch.cat(steps, 1))
    torch.testing.assert_close(logits[1], logits[0])
    torch.testing.assert_close(logits[1], pair[0](ids).logits)


def test_softmax_backward_is_the_exact_jacobian():
    x = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    x.data[0, 0, 0] = -1e9  # a masked score: clamped in the forward, no gradient through it
    assert torch.autograd.gradcheck(softmax, (x,))

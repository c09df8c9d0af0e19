"""Every trainer, native and TRL, on a tiny model for a few steps: the loss is finite, every trainable
parameter changes (only the adapter's under LoRA), and an easy reward rises. Bad configs fail at
validation, naming the key."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from rlcircuits.models.hf import LoraSettings, add_lora
from rlcircuits.models.tokenizer import build_word_tokenizer
from rlcircuits.registry import ConfigError
from rlcircuits.tasks.base import Example, Task
from rlcircuits.trainers import TRAINERS
from rlcircuits.trainers.common import backtrack
from rlcircuits.trainers.rollout import _score, left_pad, sample, score, token_logprobs
from rlcircuits.trainers.sft import collate, distinct, weighted_loss


class OnesTask(Task):
    """``<bos>`` then three free tokens; the reward is the number of ``1`` tokens. Learnable from scratch."""

    def __init__(self):
        self.tokenizer = build_word_tokenizer(["0", "1"])
        self.max_new_tokens, self.max_length = 3, 4
        self.one = self.tokenizer.convert_tokens_to_ids("1")

    def examples(self, split, n, seed):
        return [Example([self.tokenizer.bos_token_id], [self.one] * 3) for _ in range(n)]

    def rewards(self, examples, completions):
        return [float(sum(t == self.one for t in c)) for c in completions]


class Recorder:
    def __init__(self):
        self.rows = []

    def log(self, metrics, step, stage):
        self.rows.append({"step": step, **metrics})


@pytest.fixture(scope="module")
def task():
    return OnesTask()


@pytest.fixture(scope="module")
def tiny(task):
    tok = task.tokenizer
    config = GPT2Config(vocab_size=len(tok), n_positions=task.max_length, n_embd=16, n_layer=2, n_head=2, n_inner=32,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def expected_reward(model, task, n=1024) -> float:
    torch.manual_seed(123)
    rollout = sample(model, task.examples("train", n, 0), task.tokenizer, task.max_new_tokens)
    return sum(task.rewards([], rollout.completions)) / n


def make_config(name: str, **overrides):
    node = OmegaConf.merge({"name": name, "steps": 12, "batch_size": 2, "lr": 2e-2, "log_every": 1},
                           OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return TRAINERS.config(node, "trainer")


RL = {"num_generations": 8, "alpha": 0.01}
CASES = {
    "sft": {},
    "sft-trl": {"backend": "trl"},
    "reinforce": RL,
    "reinforce-trl": {**RL, "backend": "trl"},
    "reinforce-trl_max_kl": {**RL, "backend": "trl", "max_kl": 0.02},
    "reinforce-prefix": {**RL, "baseline": "prefix"},
    "reinforce-full_kl": {**RL, "baseline": "prefix", "kl": "full"},
    "reinforce-max_kl": {**RL, "baseline": "prefix", "max_kl": 0.02},
    "reinforce-annealed": {**RL, "baseline": "prefix", "alpha_start": 0.5},
    "reinforce-dpg": {**RL, "baseline": "prefix", "objective": "dpg"},
    "ppo": {**RL, "num_minibatches": 2, "update_epochs": 2},
    "ppo-full_kl": {**RL, "num_minibatches": 2, "kl": "full"},
    "ppo-max_kl": {**RL, "num_minibatches": 2, "max_kl": 0.02},
    "ppo-adaptive_kl": {**RL, "num_minibatches": 2, "target_kl": 0.01, "kl_horizon": 100, "gae_lambda": 0.9},
    "grpo": {**RL, "num_iterations": 2},
    "grpo-trl": {**RL, "num_iterations": 2, "backend": "trl"},
}


def test_sample_draws_what_generate_draws(task, tiny):
    """The decoding loop in ``rollout.sample`` against ``generate``: same seed, same sequences, including
    what follows an early <eos> (a random model emits it often; we repeat <eos> there)."""
    tok, n = task.tokenizer, 256
    torch.manual_seed(5)
    rollout = sample(tiny, task.examples("train", n, 0), tok, task.max_new_tokens)
    ids = torch.full((n, 1), tok.bos_token_id)
    torch.manual_seed(5)
    out = tiny.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                        max_new_tokens=task.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    assert torch.equal(rollout.sequences, out)
    assert (rollout.sequences == tok.eos_token_id).any()


def test_repeated_prompts_share_one_prompt_pass_and_sample_what_generate_samples(task, tiny):
    """Three prompts of two lengths, repeated and interleaved: the prompt pass runs once per distinct prompt,
    and with the same seed the sequences are ``generate``'s on the left-padded batch of every row."""
    bos, zero, one = task.tokenizer.bos_token_id, *task.tokenizer.convert_tokens_to_ids(["0", "1"])
    prompts = [[bos], [bos, one], [bos], [bos, zero], [bos, one], [bos]] * 40
    torch.manual_seed(0)  # weights large enough that a row given another prompt's cache samples otherwise
    model = GPT2LMHeadModel(GPT2Config(**{**tiny.config.to_dict(), "initializer_range": 0.5})).eval()
    rows = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: rows.append(len(args[0])), with_kwargs=True)
    torch.manual_seed(3)
    try:
        rollout = sample(model, [Example(p, []) for p in prompts], task.tokenizer, 2)
    finally:
        hook.remove()
    assert rows[0] == 3  # the prompt pass: one row per distinct prompt
    ids, mask = left_pad(prompts, task.tokenizer.pad_token_id)
    torch.manual_seed(3)
    out = model.generate(ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=2,
                         eos_token_id=task.tokenizer.eos_token_id, pad_token_id=task.tokenizer.eos_token_id)
    assert torch.equal(rollout.sequences, out)
    assert torch.equal(rollout.attention_mask[:, :2], mask)


def test_no_unmasked_pass_with_padding_at_either_end(task, tiny, monkeypatch):
    """transformers warns when a pass without a mask has <pad> in its first or last column; sampling and
    scoring never make one, even where the (random) policy samples <pad> itself."""
    flagged = []

    def spy(model, input_ids, attention_mask):
        flagged.append(attention_mask is None and bool((input_ids[:, [0, -1]] == model.config.pad_token_id).any()))

    monkeypatch.setattr(PreTrainedModel, "warn_if_padding_and_no_attention_mask", spy)
    torch.manual_seed(0)
    rollout = sample(tiny, task.examples("train", 256, 0), task.tokenizer, task.max_new_tokens)
    token_logprobs(tiny, rollout)
    assert (rollout.sequences == task.tokenizer.pad_token_id).any()  # the case that used to warn
    assert flagged and not any(flagged)


def test_token_logprobs_do_not_depend_on_padding(task, tiny):
    """Each row's completion log-probs equal those of the row scored alone: with left-padded prompts of
    different lengths (mask and positions passed) and without (the model's own causal path)."""
    bos, one = task.tokenizer.bos_token_id, task.one
    examples = [Example([bos], []), Example([bos, one], []), Example([bos, one, one], [])]
    for batch in (examples, examples[:1] * 3):
        torch.manual_seed(0)
        rollout = sample(tiny, batch, task.tokenizer, 1)
        together = token_logprobs(tiny, rollout)  # [3, C]
        for row in range(len(batch)):
            alone = rollout[[row]]
            alone.sequences, alone.attention_mask = (x[:, -len(batch[row].prompt) - 1:]
                                                     for x in (alone.sequences, alone.attention_mask))
            alone.prompt_len = len(batch[row].prompt)
            torch.testing.assert_close(together[row], token_logprobs(tiny, alone)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_trainer_learns_and_changes_every_parameter(case, task, tiny):
    name = case.split("-")[0]
    cfg = make_config(name, **CASES[case])
    policy, reference = copy.deepcopy(tiny).train(), copy.deepcopy(tiny).requires_grad_(False)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    logger = Recorder()
    torch.manual_seed(0)
    out = TRAINERS.get(name).fn(cfg, policy, reference, task, logger, "policy", seed=0)
    assert out is policy
    assert [r["step"] for r in logger.rows] == list(range(cfg.steps))  # every step, under our step numbers
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in logger.rows)
    unchanged = [n for n, p in policy.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"{case} left parameters untouched: {unchanged}"
    assert expected_reward(policy, task) > expected_reward(tiny, task) + 0.3
    if name != "sft":
        assert {"train/reward", "train/kl"} <= set(logger.rows[0])
    if "objective" in CASES[case]:  # DPG's weights: an effective sample share in (0, 1]
        assert all(0 < r["train/ess"] <= 1 for r in logger.rows)
    if "target_kl" in CASES[case]:
        assert len({r["train/kl_coef"] for r in logger.rows}) > 1  # the controller moved α
    if "alpha_start" in CASES[case]:  # α fell from alpha_start to alpha by the anneal's end, then held
        alphas = [r["train/alpha"] for r in logger.rows]
        assert alphas[0] == CASES[case]["alpha_start"] and alphas == sorted(alphas, reverse=True)
        assert alphas[cfg.steps // 2:] == pytest.approx([cfg.alpha] * (cfg.steps - cfg.steps // 2))
    if "max_kl" in CASES[case]:  # the line search ran, and every step kept within its budget
        assert max(r["train/halvings"] for r in logger.rows) > 0
        assert max(r["train/step_kl"] for r in logger.rows) <= CASES[case]["max_kl"]
    assert "forward" not in vars(policy)  # no TRL patch left behind


@pytest.mark.parametrize("case", ["reinforce", "ppo", "grpo", "reinforce-trl"])
def test_lora_trains_only_the_adapter_against_the_disabled_adapter(case, task, tiny):
    name, backend = (case.split("-") + ["native"])[:2]
    cfg = make_config(name, **{**RL, "steps": 4, "backend": backend, **({"num_minibatches": 2} if name == "ppo" else {})})
    policy = add_lora(copy.deepcopy(tiny), LoraSettings(r=2))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    TRAINERS.get(name).fn(cfg, policy, None, task, Recorder(), "policy", seed=0)
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]) != ("lora_" in n), f"{case}: {n} changed={not torch.equal(p, before[n])}"
    ids = torch.tensor([[task.tokenizer.bos_token_id, task.one, task.one]])
    with torch.no_grad(), policy.eval().disable_adapter():  # the reference: the untouched base, no copy needed
        assert torch.equal(policy(ids).logits, tiny(ids).logits)


def test_score_shares_identical_rows_and_gives_what_scoring_every_row_gives(task, tiny):
    """``score`` runs each distinct row once: every output, and the gradient of a loss on them, against
    scoring all rows (left-padded prompts of two lengths, so equal completions differ in their rows)."""
    bos, one = task.tokenizer.bos_token_id, task.one
    torch.manual_seed(0)
    rollout = sample(tiny, [Example([bos], [])] * 48 + [Example([bos, one], [])] * 16, task.tokenizer, 2)
    assert len(torch.unique(rollout.sequences, dim=0)) <= len(rollout.sequences) // 2  # many duplicates
    shared, full = (f(tiny, rollout, True, True, True) for f in (score, _score))
    for got, want in zip(vars(shared).values(), vars(full).values()):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)

    def grads(f):
        logp = f(tiny, rollout, False, False, False).logp
        return torch.autograd.grad((logp * torch.linspace(-1, 1, len(logp))[:, None]).sum(), list(tiny.parameters()))

    for got, want in zip(grads(score), grads(_score)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_distinct_rows_weighted_by_count_give_the_full_batch_loss_and_gradient(task, tiny):
    """SFT runs each distinct sequence once, weighted by its count: against HF's loss on every row."""
    bos, zero, one = task.tokenizer.bos_token_id, *task.tokenizer.convert_tokens_to_ids(["0", "1"])
    more = [Example([bos], [zero, one]), Example([bos, zero], [one]), Example([bos], [zero, one])]
    examples = task.examples("train", 64, 0) + more
    batch = collate(examples, task.tokenizer.pad_token_id)
    rows, counts = distinct(examples, task.tokenizer.pad_token_id)
    assert sorted(counts.tolist()) == [1, 2, 64]  # same ids with other labels stay apart
    key = torch.cat([rows["input_ids"], rows["labels"]], 1)  # rows in torch.unique's order, as they were
    assert torch.equal(key, torch.unique(torch.cat([batch["input_ids"], batch["labels"]], 1), dim=0))
    full = tiny(**batch).loss
    want = torch.autograd.grad(full, list(tiny.parameters()))
    loss = weighted_loss(tiny, rows, counts)
    got = torch.autograd.grad(loss, list(tiny.parameters()))
    assert torch.allclose(loss, full, atol=1e-6)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want))


def test_collate_pads_right_and_labels_only_the_completion():
    batch = collate([Example([1], [5, 6]), Example([1, 2, 3], [7])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 0], [1, 2, 3, 7]]
    assert batch["labels"].tolist() == [[-100, 5, 6, -100], [-100, -100, -100, 7]]
    assert batch["attention_mask"].tolist() == [[True, True, True, False], [True, True, True, True]]


def test_backtrack_halves_the_step_until_the_policy_moved_by_at_most_max_kl():
    """On a categorical policy with the exact KL: the step is halved the fewest times that bring
    KL(π_before‖π) within the budget, and the parameters end on the segment from before to after."""
    logits = torch.nn.Parameter(torch.zeros(5))
    step = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.0])
    with torch.no_grad():
        logits += step  # the optimiser's step

    def moved() -> float:  # KL(uniform ‖ softmax(logits))
        return float(torch.nn.functional.kl_div(logits.detach().log_softmax(-1), torch.full((5,), 0.2), reduction="sum"))

    model = torch.nn.ParameterList([logits])
    kl, halvings = backtrack(model, [torch.zeros(5)], moved, max_kl=0.01)
    assert kl <= 0.01 and halvings >= 3
    torch.testing.assert_close(logits.detach(), step / 2**halvings)
    with torch.no_grad():
        logits.copy_(step / 2 ** (halvings - 1))
    assert moved() > 0.01  # one halving fewer would not have done
    assert backtrack(model, [torch.zeros(5)], moved, max_kl=10.0) == (pytest.approx(moved()), 0)


@pytest.mark.parametrize("name,override,key", [
    ("grpo", "num_generations=1", "trainer.num_generations"),
    ("reinforce", "num_generations=1", "trainer.num_generations"),
    ("grpo", "clip=0", "trainer.clip"),
    ("ppo", "clip=-0.1", "trainer.clip"),
    ("ppo", "gae_lambda=1.5", "trainer.gae_lambda"),
    ("grpo", "scale_rewards=std", "trainer.scale_rewards"),
    ("grpo", "kl.estimator=k4", "trainer.kl.estimator"),
    ("grpo", "kl.placement=logits", "trainer.kl.placement"),
    ("sft", "backend=jax", "trainer.backend"),
    ("sft", "beta2=1", "trainer.beta2"),
    ("sft", "beta1=-0.1", "trainer.beta1"),
    ("reinforce", "max_kl=-1", "trainer.max_kl"),
    ("ppo", "max_kl=-0.5", "trainer.max_kl"),
    ("ppo", "backend=trl", "trainer.backend"),
    ("reinforce", "backend=trl baseline=mean", "trainer.baseline"),
    ("reinforce", "kl=k3", "trainer.kl"),
    ("reinforce", "alpha=0.5 alpha_start=0.1", "trainer.alpha_start"),
    ("reinforce", "alpha=0 alpha_start=1", "trainer.alpha_start"),
    ("reinforce", "alpha_anneal=0", "trainer.alpha_anneal"),
    ("reinforce", "backend=trl baseline=rloo alpha_start=1", "trainer.alpha_start"),
    ("reinforce", "objective=forward", "trainer.objective"),
    ("reinforce", "objective=dpg kl=full", "trainer.objective"),
    ("reinforce", "backend=trl baseline=rloo kl=full", "trainer.kl"),
    ("ppo", "kl=k2", "trainer.kl"),
    ("grpo", "backend=trl kl.placement=reward", "trainer.kl"),
])
def test_bad_trainer_config_fails_naming_the_key(name, override, key):
    node = OmegaConf.merge({"name": name}, OmegaConf.from_dotlist(override.split()))
    with pytest.raises(ConfigError, match=f"^{key}: ") as e:
        TRAINERS.config(node, "trainer")
    if override == "backend=trl":
        assert "TRL has no ppo trainer" in str(e.value)

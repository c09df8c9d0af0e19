"""``trainer.backend=trl``: sft, reinforce and grpo run through TRL's SFTTrainer, RLOOTrainer, GRPOTrainer.

The same task, reward, α, optimiser and schedule (ours, handed to TRL), metric names and step numbers as the
native loops, so the two backends can be compared run for run (``benchmarks/throughput.py``). What TRL
needs that the native loops do not:
- Prompts as strings, which TRL tokenises again: we check that this gives back the task's prompt ids
  exactly. SFT data goes in pre-tokenised (``input_ids`` + ``completion_mask``), so TRL adds no <eos>.
- A folder holding the reference: TRL rebuilds it from ``policy.config._name_or_path``. ``reference`` is
  saved to a temporary folder and the policy's config points there while TRL runs. A PEFT policy with
  ``reference=None`` needs none: the adapter disabled is the reference, as in the native loops (TRL's own
  choice for an existing adapter, a frozen copy of it, is removed before training).
- Logging every step: TRL averages its metrics over the logging window; ours are per step. TRL's ``kl``
  is a per-token mean; times the mean completion length it is our per-sequence ``train/kl`` (k1 from
  RLOO, TRL's k3 estimate from GRPO).
α maps to ``beta`` in both: RLOO subtracts β·Σ_t k1 from the reward (as our ``reinforce``), GRPO adds β·k3
per token to the loss (our ``grpo`` defaults). TRL 1.16's GRPO multiplies that k3 by the importance ratio
by default (``use_bias_correction_kl``), which turns its gradient into the per-token one of KL(π‖π_ref) —
what our ``kl.estimator=k2`` in the loss does — and moved toy_kl's policy far from both (TV 0.31 to the
optimum at α = 0.5, against 0.18 without): we switch it off, so both backends run the same recipe.
The data order is ours (one batch per step, no shuffling). ``max_kl`` (reinforce's line search), which TRL
lacks, runs as a callback around TRL's optimiser step (``LineSearch``).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from rlcircuits.models.hf import is_adapter
from rlcircuits.tasks.base import Example, Task
from rlcircuits.trainers.common import (
    TrainerConfig,
    backtrack,
    log_step,
    moved_from,
    optimizer_and_schedule,
    repeat,
    step_seed,
    trainable,
)
from rlcircuits.trainers.rollout import sample, token_logprobs

METRICS = {  # TRL log key → our metric name
    "reward": "train/reward",
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "learning_rate": "train/lr",
    "entropy": "train/entropy",
    "clip_ratio/region_mean": "train/clip_frac",
    "mean_token_accuracy": "train/token_accuracy",
}


def train(cfg: TrainerConfig, policy, reference, task: Task, logger, stage: str, seed: int = 0):
    """Run ``cfg.name`` through its TRL trainer on ``policy`` (trained in place) and return ``policy``."""
    import trl  # imported here: it takes seconds, and native runs never need it

    if is_adapter(policy) and reference is not None:
        raise ValueError("a PEFT policy's reference is its base with the adapter disabled: pass reference=None")
    updates = getattr(cfg, "num_iterations", 1)  # GRPO: TRL counts an optimiser step per iteration
    examples = [e for step in range(cfg.steps) for e in task.examples("train", cfg.batch_size, step_seed(seed, stage, step))]
    with tempfile.TemporaryDirectory(prefix="rlcircuits-trl-") as tmp, reference_folder(policy, reference, tmp):
        common = {
            "output_dir": tmp, "max_steps": cfg.steps * updates, "logging_steps": 1, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "use_cpu": next(policy.parameters()).device.type == "cpu",
            "bf16": False, "seed": seed, "activation_checkpointing": False, "max_grad_norm": cfg.grad_clip,
            "shuffle_dataset": False,
        }
        if cfg.name == "sft":
            args = trl.SFTConfig(**common, per_device_train_batch_size=cfg.batch_size, completion_only_loss=True,
                                 train_sampling_strategy="sequential")
            kwargs = {"train_dataset": token_dataset(examples)}
        else:
            rl = {"per_device_train_batch_size": cfg.batch_size * cfg.num_generations, "num_generations": cfg.num_generations,
                  "max_completion_length": task.max_new_tokens, "beta": cfg.alpha, "temperature": 1.0, "top_k": 0}
            if cfg.name == "grpo":
                args = trl.GRPOConfig(**common, **rl, num_iterations=cfg.num_iterations, epsilon=cfg.clip,
                                      scale_rewards=cfg.scale_rewards, loss_type="dapo", use_bias_correction_kl=False)
            else:
                args = trl.RLOOConfig(**common, **rl)
            kwargs = {"train_dataset": prompt_dataset(examples, task.tokenizer), "reward_funcs": task_reward(task, examples)}
        search = LineSearch(cfg, policy, task, stage, seed) if getattr(cfg, "max_kl", 0) else None
        callbacks = [ForwardMetrics(cfg, policy, task, logger, stage, seed, updates, search)] + ([search] if search else [])
        trainer = getattr(trl, cfg.trl_trainer)(
            model=policy, args=args, processing_class=task.tokenizer,
            optimizers=optimizer_and_schedule(policy.parameters(), cfg, updates),
            callbacks=callbacks, **kwargs,
        )
        trainer.remove_callback(PrinterCallback)  # our logger has the metrics
        if is_adapter(policy) and "ref" in policy.peft_config:
            policy.delete_adapter("ref")  # TRL's reference: a copy of the adapter; ours: the adapter disabled
        trainer.train()
    unpatch(policy)
    return policy


def prompt_dataset(examples: list[Example], tokenizer) -> Dataset:
    """``prompt`` strings and the ``example`` index the reward needs; fails if TRL's tokenisation of a
    prompt string would differ from the task's prompt ids."""
    texts = {}
    for e in examples:
        key = tuple(e.prompt)
        if key not in texts:
            text = tokenizer.decode(e.prompt)
            ids = tokenizer(text=[text])["input_ids"][0]
            if ids != e.prompt:
                raise ValueError(f"TRL would tokenise prompt {text!r} as {ids}, not the task's {e.prompt}")
            texts[key] = text
    return Dataset.from_dict({"prompt": [texts[tuple(e.prompt)] for e in examples], "example": list(range(len(examples)))})


def token_dataset(examples: list[Example]) -> Dataset:
    """Pre-tokenised SFT data: the loss is on the completion tokens only, exactly as in native ``sft``."""
    return Dataset.from_dict({
        "input_ids": [e.prompt + e.completion for e in examples],
        "completion_mask": [[0] * len(e.prompt) + [1] * len(e.completion) for e in examples],
    })


def task_reward(task: Task, examples: list[Example]):
    """The task's reward as a TRL reward function (called with keyword arguments, one per column)."""

    def task_reward(completion_ids: list[list[int]], example: list[int], **kwargs) -> list[float]:
        return task.rewards([examples[i] for i in example], completion_ids)

    return task_reward


@contextmanager
def reference_folder(policy, reference, tmp: str):
    """Point ``policy.config._name_or_path`` at a saved copy of ``reference`` while TRL runs."""
    if reference is None:
        yield
        return
    path = Path(tmp) / "reference"
    reference.save_pretrained(path)
    config = policy.config
    old = config._name_or_path
    config._name_or_path = str(path)
    try:
        yield
    finally:
        config._name_or_path = old


def unpatch(policy) -> None:
    """Drop the fused LM head TRL installs as an instance ``forward``, so the class's forward is back."""
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    vars(model).pop("forward", None)


class ForwardMetrics(TrainerCallback):
    """Forward TRL's per-step logs to our logger under our names and step numbers, with our progress bar."""

    def __init__(self, cfg: TrainerConfig, policy, task: Task, logger, stage: str, seed: int, updates: int,
                 search: LineSearch | None = None):
        self.cfg, self.policy, self.task, self.logger, self.stage, self.seed = cfg, policy, task, logger, stage, seed
        self.updates, self.search = updates, search
        self.bar = tqdm(total=cfg.steps, desc=f"{stage} {cfg.name} (trl)", leave=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        step, iteration = divmod(state.global_step - 1, self.updates)
        if "train_runtime" in logs or iteration:  # TRL's end-of-training summary; a rollout's later updates
            return
        metrics = {ours: logs[theirs] for theirs, ours in METRICS.items() if logs.get(theirs) is not None}
        if logs.get("kl") is not None:
            metrics["train/kl"] = logs["kl"] * logs["completions/mean_length"]
        if self.search:
            metrics |= self.search.metrics
        log_step(self.logger, self.bar, metrics, step, self.stage, self.cfg, self.policy, self.task, self.seed)
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


class LineSearch(TrainerCallback):
    """``max_kl`` under TRL, which has no line search: around each optimiser step, ``backtrack`` until the
    policy moved by ≤ ``max_kl`` nats per sequence, as the native loops do. TRL does not hand its rollout to
    callbacks, so this draws its own from π_before on the step's prompts (one more sampling and two more
    scorings per step)."""

    def __init__(self, cfg: TrainerConfig, policy, task: Task, stage: str, seed: int):
        self.cfg, self.policy, self.task, self.stage, self.seed = cfg, policy, task, stage, seed
        self.metrics: dict[str, float] = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        prompts = self.task.examples("train", self.cfg.batch_size, step_seed(self.seed, self.stage, state.global_step))
        self.rollout = sample(self.policy, repeat(prompts, self.cfg.num_generations), self.task.tokenizer,
                              self.task.max_new_tokens)
        with torch.no_grad():
            self.logp = token_logprobs(self.policy, self.rollout)
        self.before = [p.detach().clone() for p in trainable(self.policy)]

    def on_optimizer_step(self, args, state, control, **kwargs):
        kl, halvings = backtrack(self.policy, self.before, moved_from(self.policy, self.rollout, self.logp),
                                 self.cfg.max_kl)
        self.metrics = {"train/step_kl": kl, "train/halvings": halvings}

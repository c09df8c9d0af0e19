"""Trainers, by name: ``TRAINERS[name](cfg, policy, reference, task, logger, stage)`` → trained policy.

One module per algorithm, each readable top to bottom; the shared maths is in ``rl_math``, sampling and
token scoring in ``rollout``, the loop plumbing (optimiser, schedule, logging, evaluation) in ``common``,
and ``trainer.backend=trl`` (sft, reinforce, grpo through TRL) in ``trl_backend``.
``reference=None`` means the policy is a PEFT model whose reference is itself with the adapter disabled.
"""

from rlcircuits.registry import Registry

TRAINERS = Registry("trainer")


def train_with_trl(cfg, policy, reference, task, logger, stage: str, seed: int):
    """``trainer.backend=trl``. Imported on use: TRL, datasets and the HF Trainer add seconds to every start-up."""
    from rlcircuits.trainers import trl_backend

    return trl_backend.train(cfg, policy, reference, task, logger, stage, seed)


from rlcircuits.trainers import grpo, ppo, reinforce, sft  # noqa: E402,F401  (registers)

TRAINERS.store_schemas()  # conf/trainer/<name>.yaml extends schema/trainer/<name>: every field overridable

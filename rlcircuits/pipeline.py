"""One run, top to bottom: validate everything, train the base, post-train the arms, analyse, report.

    base    = trained by ``base.trainer`` (SFT), or loaded from ``base.checkpoint``  → checkpoints/base/
    policy  = ``trainer`` applied to a copy of the base, reference = base          → checkpoints/policy/
    control = optional second arm from the same base (``control``)                → checkpoints/control/
    each analysis reads those checkpoints and adds its results                     → results.json, plots/
Every config node is validated against its registered schema before any work starts.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from threadpoolctl import threadpool_limits
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from rlcircuits.analysis import ANALYSES
from rlcircuits.io import read_json, save_checkpoint, write_json, write_text
from rlcircuits.logging import LOGGERS
from rlcircuits.models import MODELS
from rlcircuits.models.hf import add_lora, is_adapter
from rlcircuits.registry import ConfigError, check, validate
from rlcircuits.tasks import TASKS
from rlcircuits.trainers import TRAINERS

log = logging.getLogger(__name__)


@dataclass
class RunSettings:
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    alpha: float = 0.1
    headline: str | None = None
    max_steps: int | None = None
    max_examples: int | None = None

    def __post_init__(self):
        check(self.alpha >= 0, "alpha", f"{self.alpha} must be ≥ 0 (it is the KL coefficient)")
        check(self.device in ("cpu", "cuda", "auto"), "device", f"{self.device!r} is not one of cpu, cuda, auto")
        check(self.threads >= 0, "threads", "must be ≥ 0 (0 = torch's default)")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be ≥ 1 or null")
        check(self.max_examples is None or self.max_examples >= 8, "max_examples", "must be ≥ 8 or null")


@dataclass
class Spec:
    """The validated, typed form of a composed config."""

    run: RunSettings
    task: Any
    model: Any
    base_trainer: Any | None
    base_checkpoint: Path | None
    arms: dict[str, Any]  # arm name → trainer config
    analyses: dict[str, Any]  # analysis name → config
    logger: Any


def _capped(node: Any, run: RunSettings) -> Any:
    """``node`` with its ``steps`` capped by ``max_steps``, and its ``n_examples`` (an analysis's) and
    ``eval_examples`` (a trainer's) by ``max_examples``."""
    caps = (("steps", run.max_steps), ("n_examples", run.max_examples), ("eval_examples", run.max_examples))
    for key, cap in caps:
        if cap is not None and isinstance(node, (dict, DictConfig)) and key in node:
            node = OmegaConf.merge(node, {key: min(node[key], cap)})
    return node


def build_spec(cfg: DictConfig) -> Spec:
    """Validate every part of ``cfg``; raises :class:`ConfigError` naming the first bad key."""
    top = {k: cfg.get(k) for k in ("seed", "device", "threads", "alpha", "headline", "max_steps", "max_examples")}
    run = validate(RunSettings, top, "")

    def trainer(node, key):
        node = _capped(node, run)
        return TRAINERS.config(node, key)

    base = cfg.get("base") or {}
    arms = {"policy": trainer(cfg.trainer, "trainer")}
    if cfg.get("control") is not None:
        arms["control"] = trainer(cfg.control, "control")
    analyses = {}
    for name, node in (cfg.get("analysis") or {}).items():
        check(node.get("name") == name, f"analysis.{name}", f"its name is {node.get('name')!r}, expected {name!r}")
        analyses[name] = ANALYSES.config(_capped(node, run), f"analysis.{name}")
    model = MODELS.config(cfg.model, "model")
    if getattr(getattr(model, "lora", None), "r", 0) > 0:  # the reference is the loaded model, adapter disabled
        check(base.get("trainer") is None, "base.trainer", "with a LoRA adapter the base is the loaded model: "
              "set base.trainer=null")
        check("control" not in arms, "control", "a LoRA run post-trains one arm (the adapter wraps the base in place)")
    checkpoint = base.get("checkpoint")
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        check(checkpoint.is_dir(), "base.checkpoint", f"{checkpoint} is not a folder")
    task = TASKS.config(cfg.task, "task")
    for name, acfg in analyses.items():
        if hasattr(acfg, "check_task"):
            try:
                acfg.check_task(TASKS.get(task.name).fn)
            except ConfigError as e:
                raise ConfigError(f"analysis.{name}.{e}") from None
    return Spec(
        run=run,
        task=task,
        model=model,
        base_trainer=trainer(base["trainer"], "base.trainer") if base.get("trainer") is not None else None,
        base_checkpoint=checkpoint,
        arms=arms,
        analyses=analyses,
        logger=LOGGERS.config(cfg.logger, "logger"),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def limit_threads(threads: int) -> None:
    """Run torch and numpy/scikit-learn's BLAS on ``threads`` CPU threads (0: leave the libraries' defaults)."""
    if threads:
        torch.set_num_threads(threads)
        threadpool_limits(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_dir() -> Path:
    """The Hydra run folder (the working directory when called outside Hydra)."""
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path.cwd()


def _job_info(out: Path) -> dict:
    try:
        hc = HydraConfig.get()
    except ValueError:
        return {"name": out.name}
    multirun = hc.mode.name == "MULTIRUN"
    return {
        "name": hc.job.override_dirname or out.name,
        "group": Path(hc.sweep.dir).name if multirun else None,
        "job_type": "sweep" if multirun else "run",
    }


def transient_bars(factory, args, kwargs):
    """transformers' progress-bar hook: its bars (a checkpoint's "Loading weights", "Writing model shards", a
    download) show while they run and vanish when done, rather than leave two lines per checkpoint behind."""
    return factory(*args, **{**kwargs, "leave": False})


def run(cfg: DictConfig) -> float | None:
    """Run the pipeline described by ``cfg``; returns ``results[cfg.headline]`` when set."""
    spec = build_spec(cfg)
    hf_logging.set_tqdm_hook(transient_bars)
    limit_threads(spec.run.threads)
    device = resolve_device(spec.run.device)
    seed_everything(spec.run.seed)
    out = output_dir()
    task = TASKS.get(spec.task.name).fn(spec.task)
    logger = LOGGERS.get(spec.logger.name).fn(spec.logger, out, OmegaConf.to_container(cfg, resolve=True), _job_info(out))
    try:
        checkpoints = train_models(spec, task, logger, out, device)
        results: dict[str, Any] = {"checkpoints": {k: str(p.relative_to(out)) for k, p in checkpoints.items()}}
        for name, acfg in spec.analyses.items():
            with _timed(f"analysis {name}"):
                found = ANALYSES.get(name).fn(acfg, task, checkpoints, out)
            clash = set(found) & set(results)
            if clash:
                raise RuntimeError(f"analysis {name} returned keys already in results.json: {sorted(clash)}")
            results |= found
        write_json(out / "results.json", results)
        write_text(out / "report.md", report(results, out))
    finally:
        logger.close()
    headline = results.get(spec.run.headline) if spec.run.headline else None
    said = f"{spec.run.headline} = {headline:.4g}; " if isinstance(headline, float) else ""
    log.info("%sresults in %s, summary in %s", said, out / "results.json", out / "report.md")
    return headline


def make_base(spec: Spec, task, logger, device: torch.device):
    """The base model: ``base.checkpoint`` as it is, or built from ``model`` and trained by ``base.trainer``
    if one is set. A loaded checkpoint runs with the model option's attention (``model.attention``), which
    checkpoints do not store."""
    if spec.base_checkpoint is not None:
        attention = getattr(spec.model, "attention", None)
        base = AutoModelForCausalLM.from_pretrained(spec.base_checkpoint, **({"attn_implementation": attention}
                                                                             if attention else {}))
        log.info("base: %s as it is (base.trainer not run)", spec.base_checkpoint)
        return base.to(device)
    base = MODELS.get(spec.model.name).fn(spec.model, task).to(device)
    n_params = sum(p.numel() for p in base.parameters())
    if spec.base_trainer is None:
        log.info("base: %s (%s parameters) as built (base.trainer=null)", spec.model.name, f"{n_params:,}")
        return base
    tcfg = spec.base_trainer
    with _timed(f"base: {spec.model.name} ({n_params:,} parameters), {tcfg.name} for {tcfg.steps:,} steps"):
        TRAINERS.get(tcfg.name).fn(tcfg, base, None, task, logger, "base", spec.run.seed)
    return base


def train_models(spec: Spec, task, logger, out: Path, device: torch.device) -> dict[str, Path]:
    """Make the base, then each arm from a copy of it; returns checkpoint folders by name."""
    tok = task.tokenizer
    base = make_base(spec, task, logger, device)
    checkpoints = {"base": save_checkpoint(base, tok, out / "checkpoints" / "base")}
    base.eval().requires_grad_(False)
    lora = getattr(spec.model, "lora", None)
    for arm, tcfg in spec.arms.items():
        if lora is not None and lora.r > 0:  # reference = the same weights with the adapter disabled
            policy, reference = add_lora(base, lora).train(), None
        else:
            policy, reference = copy.deepcopy(base).requires_grad_(True).train(), base
        with _timed(f"{arm}: {tcfg.name}, {tcfg.steps:,} steps from the base"):
            TRAINERS.get(tcfg.name).fn(tcfg, policy, reference, task, logger, arm, spec.run.seed)
        if is_adapter(policy) and getattr(spec.model, "quantization", "none") == "none":
            policy = policy.merge_and_unload()  # a full checkpoint; a quantised base keeps the adapter folder
        checkpoints[arm] = save_checkpoint(policy, tok, out / "checkpoints" / arm)
    return checkpoints


@contextmanager
def _timed(what: str):
    """Log ``what`` and how long the block took, when it ends: run.log's record of the run's stages."""
    start = time.perf_counter()
    yield
    log.info("%s: %.1f s", what, time.perf_counter() - start)


def report(results: dict, out: Path) -> str:
    """``report.md``: the command's overrides, the scalar results and every plot."""
    try:
        overrides = " ".join(HydraConfig.get().overrides.task)
    except ValueError:
        overrides = ""
    lines = ["# rlcircuits run", "", f"`python run.py {overrides}`".replace(" `", "`"), "", "## Results", ""]
    for key, value in results.items():
        if isinstance(value, dict):
            lines += ["", f"**{key}**", "", *_tables(value, key), ""]
        else:
            lines.append(f"- **{key}**: {_fmt(value)}")
    plots = sorted((out / "plots").glob("*.png"))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _rows(d: dict, path: str = "") -> list[tuple[str, dict]]:
    """The leaves of nested results as table rows: (path, its non-dict entries), depth first."""
    cells = {k: v for k, v in d.items() if not isinstance(v, dict)}
    rows = [(path, cells)] if cells else []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _rows(v, f"{path}/{k}" if path else str(k))
    return rows


def _tables(d: dict, name: str) -> list[str]:
    """Markdown tables of the nested results ``name``, one per run of rows with the same columns; a row of
    ``d``'s own entries is labelled ``name``."""
    lines, columns = [], None
    for path, row in _rows(d):
        if list(row) != columns:
            columns = list(row)
            lines += ["", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines.append(f"| {path or name} | " + " | ".join(_fmt(v) for v in row.values()) + " |")
    return lines[1:]


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat |= _flatten(v, f"{prefix}{k}/")
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def load_results(run_dir: str | Path) -> dict:
    """``results.json`` of a finished run, with checkpoint paths made absolute."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    results["checkpoints"] = {k: str(run_dir / p) for k, p in results.get("checkpoints", {}).items()}
    return results

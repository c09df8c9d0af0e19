"""The metrics sink: every logged step goes to ``metrics.jsonl`` (and ``metrics.csv`` on close), and to
wandb when ``logger=wandb``.

Metric names are shared by all trainers (``train/reward``, ``train/kl``, ``train/loss``,
``eval/<split>/accuracy``); each line also records the pipeline ``stage`` (``base``, ``policy``, …), and
wandb sees them as ``<stage>/<name>``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlcircuits.registry import Registry, check

LOGGERS = Registry("logger")


@dataclass
class LocalLoggerConfig:
    name: str = "local"


@dataclass
class WandbLoggerConfig:
    name: str = "wandb"
    mode: str = "offline"  # offline (sync later with `wandb sync`) | online | disabled
    project: str = "rlcircuits"
    entity: str | None = None
    group: str | None = None  # ties sweep jobs together; default: the sweep folder
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        check(self.mode in ("offline", "online", "disabled"), "mode",
              f"{self.mode!r} is not one of offline, online, disabled")


class MetricsLogger:
    """Append-only JSONL of ``{"stage", "step", **metrics}`` lines, optionally mirrored to wandb."""

    def __init__(self, out_dir: str | Path, wandb_run=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self._wandb = wandb_run
        self._wandb_step = 0

    def log(self, metrics: dict[str, Any], step: int, stage: str) -> None:
        row = {"stage": stage, "step": step, **{k: _scalar(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({f"{stage}/{k}": v for k, v in row.items() if k not in ("stage", "step")},
                            step=self._wandb_step)
            self._wandb_step += 1

    def close(self) -> None:
        """Flush, write ``metrics.csv`` beside the JSONL, and finish the wandb run."""
        self._file.close()
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            with (self.path.with_suffix(".csv")).open("w", newline="") as f:
                writer = csv.DictWriter(f, keys)
                writer.writeheader()
                writer.writerows(rows)
        if self._wandb is not None:
            self._wandb.finish()


class NullLogger:
    """Drops every metric: for scripts that train without a run folder (the benchmarks)."""

    def log(self, metrics: dict[str, Any], step: int, stage: str) -> None:
        pass


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


@LOGGERS.register("local", schema=LocalLoggerConfig)
def local_logger(cfg: LocalLoggerConfig, out_dir: Path, run_config: dict, job: dict) -> MetricsLogger:
    return MetricsLogger(out_dir)


@LOGGERS.register("wandb", schema=WandbLoggerConfig)
def wandb_logger(cfg: WandbLoggerConfig, out_dir: Path, run_config: dict, job: dict) -> MetricsLogger:
    """A wandb run with the resolved config; sweep jobs share a group (the sweep folder's name)."""
    import wandb

    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        mode=cfg.mode,
        dir=str(out_dir),
        config=run_config,
        group=cfg.group or job.get("group"),
        job_type=job.get("job_type"),
        name=job.get("name"),
        tags=list(cfg.tags),
        reinit="finish_previous",
    )
    return MetricsLogger(out_dir, run)


LOGGERS.store_schemas()  # each conf/logger/<name>.yaml extends schema/logger/<name>: every field overridable

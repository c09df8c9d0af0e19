"""When a Hydra multirun ends: ``summary.csv`` (one row per job) and the sweep plots, in the sweep folder.

A Hydra callback, so it works with every launcher (basic, joblib, submitit): it only reads the jobs'
``results.json`` and ``.hydra/overrides.yaml``. Each analysis module may define
``plot_sweep(rows, out_dir)``; it is called with the rows of the jobs that ran that analysis.
"""

from __future__ import annotations

import csv
import importlib
import io
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rlcircuits.io import read_json, write_text
from rlcircuits.pipeline import _flatten

log = logging.getLogger(__name__)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job: its overrides (``override:<key>``) then its flattened results."""
    rows = []
    for results in sorted(sweep_dir.glob("*/results.json"), key=lambda p: _job_number(p.parent)):
        job = results.parent
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml") if (job / ".hydra" / "overrides.yaml").exists() else []
        row: dict[str, Any] = {"job": job.name}
        row |= {f"override:{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in overrides if "=" in o}
        config = OmegaConf.load(job / ".hydra" / "config.yaml")
        row["analyses"] = ",".join(config.get("analysis") or {})
        row |= _flatten(read_json(results))
        rows.append(row)
    return rows


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def write_summary(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, keys)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def summarise(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and every analysis's sweep plot for the jobs under ``sweep_dir``."""
    rows = collect(sweep_dir)
    if not rows:
        log.warning("no finished jobs with results.json under %s", sweep_dir)
        return rows
    write_summary(rows, sweep_dir / "summary.csv")
    for name in dict.fromkeys(a for r in rows for a in r["analyses"].split(",") if a):
        module = importlib.import_module(f"rlcircuits.analysis.{name}")
        if hasattr(module, "plot_sweep"):
            module.plot_sweep([r for r in rows if name in r["analyses"].split(",")], sweep_dir)
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise(sweep_dir)
        if rows:
            log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.csv", len(rows))

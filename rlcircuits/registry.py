"""Registries: one dict per kind, filled by a ``register`` decorator.

The registry key equals the YAML option name and the module name. Each entry may carry a typed schema
(a dataclass); ``Registry.config`` validates a YAML node against it, so a wrong key, type or value fails
before any work starts, naming the key. ``Registry.store_schemas`` hands the same schemas to Hydra, whose
YAML options extend them, so every field can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A user-facing configuration error: says which key is wrong and why."""


@dataclass(frozen=True)
class Entry:
    fn: Callable[..., Any]
    schema: type | None


class Registry(dict):
    """``name -> Entry``; ``register`` adds, ``get`` looks up with an error listing the valid names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, schema: type | None = None):
        def decorator(fn):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = Entry(fn, schema)
            return fn

        return decorator

    def get(self, name: str) -> Entry:  # type: ignore[override]
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")
        return self[name]

    def store_schemas(self) -> None:
        """Put each schema in Hydra's ConfigStore as ``schema/<kind>/<name>``.

        A YAML option that lists it first in its defaults (``- /schema/trainer/sft@_here_``) holds every field
        of the schema, so any field can be overridden from the command line (``trainer.beta2=0.95``): Hydra's
        struct mode rejects keys the YAML does not spell out, and ``+key=value`` fails for keys it does.
        """
        for name, entry in self.items():
            if entry.schema is not None:
                ConfigStore.instance().store(group=f"schema/{self.kind}", name=name, node=entry.schema)

    def config(self, cfg: DictConfig | dict, key: str):
        """Validate ``cfg`` (the YAML node at ``key``) against the schema of ``cfg.name``."""
        entry = self.get(cfg["name"])
        if entry.schema is None:
            return cfg
        return validate(entry.schema, cfg, key)


def validate(schema: type, cfg: Any, key: str):
    """Merge ``cfg`` into ``schema`` and build it (running ``__post_init__`` checks).

    Errors name the full key, e.g. ``task.branches.A.prob``.
    """
    try:
        if isinstance(cfg, DictConfig):  # resolve interpolations (``${alpha}``) against the full config
            cfg = OmegaConf.to_container(cfg, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{_join(key, getattr(e, 'full_key', ''))}: {msg}") from None
    except ConfigError as e:
        raise ConfigError(_join(key, str(e))) from None


def _join(prefix: str, rest: str) -> str:
    return ".".join(p for p in (prefix, rest) if p)


def check(ok: bool, key: str, why: str) -> None:
    """Raise ``ConfigError("<key>: <why>")`` unless ``ok``; for use in schema ``__post_init__``."""
    if not ok:
        raise ConfigError(f"{key}: {why}")

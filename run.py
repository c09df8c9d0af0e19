"""The one entrypoint: compose conf/, run the pipeline, return the headline metric.

    python run.py experiment=toy_kl alpha=0.1
    python run.py -m experiment=toy_kl alpha=0.03,0.1,0.3,1 seed=0,1,2
    python run.py --help
"""

import hydra
from omegaconf import DictConfig

from rlcircuits.pipeline import run
from rlcircuits.registry import ConfigError


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except ConfigError as e:  # the user's input, not our bug: no traceback
        raise SystemExit(f"config error: {e}") from None


if __name__ == "__main__":
    main()

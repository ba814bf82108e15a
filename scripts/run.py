"""rsnet's command line: python scripts/run.py [group=choice ...] [key=value ...] [-m for sweeps]."""

import logging
import sys

import hydra
from omegaconf import DictConfig

import rsnet.config  # noqa: F401  (registers the config schema and resolvers)
from rsnet.errors import RsnetError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from rsnet import pipeline

    try:
        pipeline.run(cfg)
    except RsnetError as e:
        logging.getLogger("rsnet").error("%s", e)
        print(f"rsnet error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

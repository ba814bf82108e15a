"""rsnet's command line: python scripts/run.py [group=choice ...] [key=value ...] [-m for sweeps]."""

import logging
import sys

import hydra
from omegaconf import DictConfig

import rsnet.config  # noqa: F401  (registers the config schema and resolvers)
from rsnet.errors import RsnetError
from rsnet.sweep import failure, in_multirun


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from rsnet import pipeline

    try:
        pipeline.run(cfg)
    except Exception as e:
        if in_multirun():  # logged; the other jobs go on and the sweep ends non-zero
            return failure(e)
        if not isinstance(e, RsnetError):
            raise
        logging.getLogger("rsnet").error("%s", e)
        print(f"rsnet error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

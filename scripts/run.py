"""rsnet's command line: python scripts/run.py [group=choice ...] [key=value ...] [-m for sweeps].

Data-parallel: torchrun --nproc_per_node=K scripts/run.py ... (see docs/scale.md).
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

import rsnet.config  # noqa: F401  (registers the config schema and resolvers)
from rsnet import distributed
from rsnet.errors import RsnetError
from rsnet.sweep import failure, in_multirun

# Under torchrun only rank 0 writes Hydra's files (.hydra/, run.log); the other ranks log
# warnings and errors to the console.
OTHER_RANKS = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from rsnet import pipeline

    if not distributed.from_env().is_main:
        logging.getLogger("rsnet").setLevel(logging.WARNING)
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
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    if not distributed.from_env().is_main:
        sys.argv += OTHER_RANKS
    main()

"""Parameters and MACs of the model zoo's default builds (conv + linear MACs, one image).

    python scripts/zoo.py            # markdown table of every conf/model/*.yaml (except torchvision)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import rsnet.config  # noqa: E402,F401
from rsnet.metrics import count_macs, count_params  # noqa: E402
from rsnet.models import build_model  # noqa: E402

# (model config, classes, input sizes): the settings the project uses them at
BUILDS = [("resnet20", 10, [32]), ("resnet56", 10, [32]), ("vgg16", 10, [32]),
          ("googlenet_rs", 200, [64, 32]), ("googlenet_rs", 1000, [227]),
          ("mobilenet_v1", 200, [64, 32]), ("mobilenet_v1", 1000, [224]),
          ("wrn", 10, [32]), ("densenet40", 10, [32]), ("mobilenet_v2", 10, [32]),
          ("shufflenet_v2", 10, [32]), ("gunn15", 10, [32]), ("gunn15", 3, [32])]


def main() -> None:
    print("| model | classes | input px | params | MACs |\n|---|---:|---:|---:|---:|")
    for name, classes, sizes in BUILDS:
        for size in sizes:
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"model={name}", f"model.input_size={size}"])
            model = build_model(OmegaConf.merge(cfg.model, {"checkpoint": None}), classes)
            print(f"| {name} | {classes} | {size} | {count_params(model):,} | "
                  f"{count_macs(model, size) / 1e6:,.1f} M |")


if __name__ == "__main__":
    main()

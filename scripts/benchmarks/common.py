"""What the benchmarks share: the repository, its Hydra config, small helpers."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

import rsnet.config  # noqa: F401  (registers the config schema and resolvers)

REPO = Path(__file__).resolve().parents[2]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def ort_predictor(path: Path, threads: int = 2):
    """An ONNX Runtime session on ``path`` as a runtime Predictor (logits of a numpy batch)."""
    from rsnet.deploy.onnx_io import open_session
    from rsnet.deploy.runtimes import Predictor

    session = open_session(path, threads=threads)
    name = session.get_inputs()[0].name
    return Predictor(lambda x: session.run(None, {name: x})[0], {})

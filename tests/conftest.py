"""Shared fixtures. Real data and weights live in ../shared (or $RSNET_DATA / $RSNET_MODELS);
tests that need them fail, not skip, when they are missing."""

from __future__ import annotations

import os
from pathlib import Path

# The tests run tiny models: one intra-op thread (here and in the runs they start) is faster
# than several, and far faster when another job keeps the cores busy. Before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import rsnet.config  # noqa: F401, E402  (schema + resolvers)
from rsnet.deploy.latency_table import LatencyTable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def shared(kind: str) -> Path:
    env = os.environ.get(f"RSNET_{kind.upper()}")
    return Path(env) if env else REPO.parent / "shared" / kind


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared("data")
    assert (path / "cifar10-jpeg.tar.gz").exists() or (path / "cifar10-jpeg").is_dir(), \
        f"CIFAR-10 (JPEG) not found in {path}; set RSNET_DATA"
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    path = shared("models")
    assert (path / "resnet20-12fca82f.th").exists(), f"pretrained ResNets not found in {path}"
    return path


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Keep the decoded-image cache of test runs out of the user's cache unless one is set."""
    if "RSNET_CACHE" not in os.environ:
        os.environ["RSNET_CACHE"] = str(tmp_path_factory.mktemp("rsnet_cache"))
    yield


def network_reachable(host: str = "download.pytorch.org") -> bool:
    """Whether ``host`` resolves: the offline checks of downloads then simulate the failure
    (or skip) instead of downloading."""
    import socket
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def compose_cfg(*overrides: str):
    """The config for ``overrides``; without an ``experiment=...`` the plain defaults (not
    the default job's experiment, conf/experiment/demo.yaml)."""
    if not any(o.startswith("experiment=") for o in overrides):
        overrides = ("~experiment", *overrides)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# The thesis's N = 5 GoogLeNet (method.md section 4).
THESIS_WIDTHS = {  # widths of the thesis's N = 5 plan
    "conv1": 13, "conv2_reduce": 13, "conv2": 38,
    "inception3a": [13, 19, 3, 26, 6, 6], "inception3b": [26, 26, 6, 38, 19, 13],
    "inception4a": [38, 19, 3, 42, 10, 13], "inception4b": [32, 22, 5, 45, 13, 13],
    "inception4c": [26, 26, 5, 51, 13, 13], "inception4d": [28, 36, 8, 72, 16, 16],
    "inception4e": [64, 40, 8, 80, 32, 32], "inception5a": [64, 40, 8, 80, 32, 32],
    "inception5b": [96, 48, 12, 96, 32, 32],
}


# A tiny, fast configuration (conf/experiment/smoke.yaml): synthetic 16 px images, a ResNet-8
# with widths 4/8/16, two epochs.
TINY = ["experiment=smoke", "progress=false"]


@pytest.fixture(scope="module")
def one_thread():
    """Small forwards gain nothing from threads and crawl when another job loads the CPU:
    modules that run many of them use ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- deterministic latencies ------------------------------------------------------------------
# Measured latencies of microsecond-scale layers drift with the machine's load, so tests of the
# logic built on them (latency budgets, NetAdapt) price layers by their multiply-adds instead;
# the real ONNX Runtime measurement has its own test (tests/test_search.py).

def layer_cost(spec, cin: int, cout: int) -> float:
    """Milliseconds of a fake layer: its multiply-adds / 1e4."""
    groups = cin if spec.kind == "depthwise" else spec.groups
    h, w = (max(1, s // st) for s, st in zip(spec.in_hw, spec.stride))
    return cin // groups * cout * spec.kernel[0] * spec.kernel[1] * h * w / 1e4


class FakeTable(LatencyTable):
    """A latency table whose entries are :func:`layer_cost`; ``measured`` counts the entries it
    priced (``unsaved`` is reset by whoever saves the table)."""

    def __init__(self, specs, threads: int = 1, runs: int = 50, warmup: int = 5, entries=None):
        super().__init__(specs, threads, runs, warmup, entries)
        self.measured = 0

    def layer_ms(self, spec, cin, cout):
        key = self.key(spec, cin, cout)
        if key not in self.entries:
            self.measured += 1
            self.unsaved += 1
            self.entries[key] = layer_cost(spec, cin, cout)
        return self.entries[key]

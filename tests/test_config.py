"""Every config file composes; rsnet's blocks are typed, so a misspelt key fails at compose time."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg
from rsnet.errors import RsnetError

GROUPS = ["model", "dataset", "scaling", "compression", "train", "export", "experiment",
          "train/optimizer", "train/scheduler", "train/loss"]
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_the_primary_config_composes_to_the_default_job():
    """python scripts/run.py: the method end to end (conf/experiment/demo.yaml)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config")
    assert cfg.name == "demo" and cfg.model.name == "resnet20" and cfg.model.checkpoint
    assert cfg.dataset.name == "cifar10_jpeg" and cfg.dataset.num_classes == 5
    assert (cfg.scaling.name, cfg.compression.name, cfg.export.name) == ("rs", "prune", "int8")
    assert cfg.train.distill.enabled and cfg.stop_after == "report"
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    plain = compose_cfg()  # ~experiment: the plain defaults
    assert (plain.name, plain.scaling.name, plain.compression.name) == ("default", "none", "none")


@pytest.mark.parametrize("group, choice", CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_config_file_composes(group, choice):
    extra = ["dataset.source.path=/tmp/x"] if choice == "imagefolder" else []
    cfg = compose_cfg(f"{group}={choice}", *extra)
    OmegaConf.to_container(cfg, resolve=True)
    if group.startswith("train"):  # the swappable parts build with the arguments rsnet passes
        optimizer = instantiate(cfg.train.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        instantiate(cfg.train.scheduler)(optimizer, total_steps=10, steps_per_epoch=5)
        instantiate(cfg.train.loss)(torch.zeros(2, 3), torch.tensor([0, 2]))


@pytest.mark.parametrize("override", ["dataset.num_clases=5", "train.epoch=3", "model.chekpoint=x",
                                      "dataset.augment.flp=true", "stopafter=data"])
def test_misspelt_keys_fail_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


def test_wrong_types_fail_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("train.epochs=many")


def test_a_target_sets_the_width_multiple_and_the_fingerprint_holds_its_effect_once():
    from rsnet.pipeline import fingerprint
    avx2 = compose_cfg("target=x86_avx2")
    assert avx2.scaling.widths.round_to == 8 and compose_cfg().scaling.widths.round_to is None
    assert compose_cfg("target=x86_avx512").scaling.widths.round_to == 16
    explicit = compose_cfg("scaling.widths.round_to=8")  # the same run, said another way
    assert fingerprint(avx2) == fingerprint(explicit)
    assert fingerprint(avx2) != fingerprint(compose_cfg())
    # keep_narrow reaches the plan stage's width rule and is another run; its default is not
    from rsnet.plan.policies import WidthRule
    from rsnet.stages.plan import width_rule
    kept = compose_cfg("target=x86_avx512", "scaling.widths.keep_narrow=true")
    assert width_rule(kept.scaling.widths) == WidthRule(1, 16, keep_narrow=True)
    assert fingerprint(kept) != fingerprint(compose_cfg("target=x86_avx512"))
    assert fingerprint(compose_cfg("scaling.widths.keep_narrow=false")) == fingerprint(compose_cfg())


@pytest.mark.parametrize("overrides, message", [
    (["scaling.widths.keep_narrow=true"], "needs a multiple to round to"),
    (["target=x86_avx512", "scaling.widths.keep_narrow=true", "compression=netadapt"],
     "compression=netadapt steps widths by whole multiples"),
])
def test_keep_narrow_where_it_would_be_ignored_is_refused(overrides, message):
    from rsnet.validate import validate
    with pytest.raises(RsnetError, match=message):
        validate(compose_cfg(*overrides))


def test_speed_settings_and_later_added_keys_leave_the_fingerprint_alone():
    """train.compile changes only the speed; a key added later at its old implicit value
    (scaling.budget.runtime, .threads) must not stop older run directories from resuming."""
    from omegaconf import OmegaConf

    from rsnet.pipeline import fingerprint
    base = compose_cfg("scaling=rs")
    assert fingerprint(compose_cfg("scaling=rs", "train.compile=true")) == fingerprint(base)
    old = OmegaConf.to_container(base, resolve=True)  # as a config made before the keys existed
    del old["scaling"]["budget"]["runtime"], old["scaling"]["budget"]["threads"]
    assert fingerprint(OmegaConf.create(old)) == fingerprint(base)
    assert fingerprint(compose_cfg("scaling=rs", "scaling.budget.threads=2")) != fingerprint(base)

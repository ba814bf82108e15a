"""Real data and real weights: the pretrained ResNet-20 reproduces its CIFAR-10 (JPEG) accuracy."""

import math

import pytest
import torch

from conftest import compose_cfg
from rsnet.data import build_data
from rsnet.models import build_model
from rsnet.train import predict, resolve_runtime

pytestmark = pytest.mark.integration

PUBLISHED_JPEG_ACC = 0.8103  # ../shared/models/README.md: ResNet-20 on all 10,000 JPEG test images


def test_pretrained_resnet20_reproduces_its_jpeg_accuracy(data_dir, models_dir):
    cfg = compose_cfg(f"dataset.root={data_dir}", f"model.checkpoint={models_dir / 'resnet20-12fca82f.th'}",
                      "dataset.num_classes=null", "train.precision=fp32", "train.channels_last=false")
    data = build_data(cfg.dataset)
    model = build_model(cfg.model, len(data.base_class_names))
    # a seeded 2,000-image slice of the official test set
    idx = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))[:2000]
    data.test = type(data.test)(data.test.images[idx], data.test.targets[idx], data.test.orig_labels[idx])
    logits = predict(model, data.test, data, resolve_runtime(cfg.train), 500)
    acc = (logits.argmax(1) == data.test.targets).float().mean().item()
    sigma = math.sqrt(PUBLISHED_JPEG_ACC * (1 - PUBLISHED_JPEG_ACC) / 2000)
    assert abs(acc - PUBLISHED_JPEG_ACC) < 3 * sigma, (acc, sigma)

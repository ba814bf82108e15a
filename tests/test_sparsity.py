import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import compose_cfg
from rsnet.errors import RsnetError
from rsnet.compress.sparsity import MagnitudePruner, polynomial_sparsity, prunable_layers, sparsity_report
from rsnet.stages.train import magnitude_pruner


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes))


def train_steps(model: nn.Module, optimizer, pruner: MagnitudePruner | None, steps: range,
                seed: int = 0) -> None:
    """SGD on random data; after each optimiser step the pruner's step() (masks + apply)."""
    g = torch.Generator().manual_seed(seed)
    for t in steps:
        x = torch.randn(8, 3, 6, 6, generator=g)
        y = torch.randint(0, 5, (8,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step(t)


# --- schedule ---------------------------------------------------------------------------

def test_polynomial_schedule_matches_the_formula():
    kw = dict(initial_sparsity=0.1, final_sparsity=0.7, begin_step=100, end_step=500)
    assert polynomial_sparsity(0, **kw) == 0.0  # nothing pruned before begin_step
    assert polynomial_sparsity(99, **kw) == 0.0
    assert polynomial_sparsity(100, **kw) == pytest.approx(0.1)  # s_i at t0
    # power 3 by hand: 0.7 + (0.1 - 0.7) * (1 - p)^3
    assert polynomial_sparsity(200, **kw) == pytest.approx(0.7 - 0.6 * 0.75 ** 3)  # 0.446875
    assert polynomial_sparsity(200, **kw) == pytest.approx(0.446875)
    assert polynomial_sparsity(300, **kw) == pytest.approx(0.625)  # p = 1/2: 0.7 - 0.6/8
    assert polynomial_sparsity(400, **kw) == pytest.approx(0.7 - 0.6 / 64)
    assert polynomial_sparsity(500, **kw) == pytest.approx(0.7)  # s_f at t1
    assert polynomial_sparsity(10_000, **kw) == pytest.approx(0.7)  # and after
    assert polynomial_sparsity(300, **kw, power=1) == pytest.approx(0.4)  # linear
    # begin == end: one-shot pruning to s_f
    assert polynomial_sparsity(5, 0.0, 0.6, 5, 5) == pytest.approx(0.6)
    assert polynomial_sparsity(4, 0.0, 0.6, 5, 5) == 0.0


def test_schedule_is_monotone():
    values = [polynomial_sparsity(t, 0.0, 0.9, 10, 110) for t in range(130)]
    assert all(a <= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kw, setting", [
    (dict(initial_sparsity=-0.1), "initial_sparsity"),
    (dict(final_sparsity=1.0), "final_sparsity"),
    (dict(initial_sparsity=0.8, final_sparsity=0.5), "initial_sparsity"),
    (dict(begin_step=-1), "begin_step"),
    (dict(begin_step=10, end_step=5), "end_step"),
    (dict(power=0), "power"),
    (dict(frequency=0), "frequency"),
    (dict(scope="model"), "scope"),
    (dict(exclude=["nope"]), "exclude"),
])
def test_bad_settings_name_the_setting(kw, setting):
    args = dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10) | kw
    with pytest.raises(RsnetError, match=f"compression.sparsity.{setting}"):
        MagnitudePruner(small_cnn(), **args)


# --- pruner -----------------------------------------------------------------------------

def test_updates_happen_on_schedule():
    pruner = MagnitudePruner(small_cnn(), 0.2, 0.8, begin_step=10, end_step=35, frequency=10)
    updates = [t for t in range(60) if pruner.step(t)]
    assert updates == [10, 20, 30, 35]  # every `frequency` steps from begin, once at end
    assert pruner.sparsity == pytest.approx(0.8)


def test_late_call_catches_up_and_repeats_do_nothing():
    pruner = MagnitudePruner(small_cnn(), 0.2, 0.8, begin_step=10, end_step=35, frequency=10)
    assert not pruner.step(5)
    assert pruner.step(27)  # skipped 10 and 20: jumps to the update of step 20
    assert pruner.last_update_step == 20
    assert pruner.sparsity == pytest.approx(polynomial_sparsity(20, 0.2, 0.8, 10, 35))
    assert not pruner.step(27) and not pruner.step(29)
    assert pruner.step(100) and pruner.last_update_step == 35


@pytest.mark.parametrize("final", [0.6, 0.7])
def test_constant_sparsity_prunes_at_step_0_and_keeps_it(final):
    """begin = end = 0 (compression.sparsity.end_epoch=0 in experiment=cifar_gmp): every layer
    at round(n * final) zeros right after the first optimizer step, settled from then on, and
    the same masks (no further update, not one weight revived) through steps that cross the
    update frequency, with momentum and weight decay."""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pruner = MagnitudePruner(model, 0.0, final, begin_step=0, end_step=0, frequency=50)
    assert not pruner.settled()
    train_steps(model, opt, pruner, range(1))
    assert pruner.settled() and pruner.last_update_step == 0
    zeros = {n: int((layer.weight == 0).sum()) for n, layer in pruner.layers.items()}
    assert zeros == {n: round(layer.weight.numel() * final) for n, layer in pruner.layers.items()}
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    g = torch.Generator().manual_seed(1)
    for t in range(1, 121):  # past steps 50 and 100, where a polynomial schedule would update
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        assert not pruner.step(t)  # no mask update after step 0
    assert pruner.settled() and pruner.last_update_step == 0
    assert all(torch.equal(pruner.masks[n], masks[n]) for n in masks)
    assert {n: int((layer.weight == 0).sum()) for n, layer in pruner.layers.items()} == zeros


def test_a_polynomial_schedule_settles_only_at_its_end_step():
    pruner = MagnitudePruner(small_cnn(), 0.0, 0.6, begin_step=0, end_step=35, frequency=10)
    settled = []
    for t in range(40):
        pruner.step(t)
        settled.append(pruner.settled())
    assert settled == [False] * 35 + [True] * 5


def gmp_ctx(*overrides):
    """What the train stage's magnitude_pruner reads, for experiment=cifar_gmp on CIFAR-10
    (45,000 training images after the validation split: 351 steps of 128 per epoch)."""
    cfg = compose_cfg("experiment=cifar_gmp", *overrides)
    return SimpleNamespace(cfg=cfg, data=SimpleNamespace(train=range(45_000)))


def test_the_gmp_experiment_is_the_issue_s_setting():
    """Pretrained ResNet-20 (model=resnet44: ResNet-44), CIFAR-10 (JPEG) with all 10 classes,
    magnitude pruning, fine-tuning, int8; no augmentation and the dense reference one override
    away."""
    cfg = gmp_ctx().cfg
    assert (cfg.model.name, cfg.model.checkpoint) == ("resnet20", "resnet20-12fca82f.th")
    assert gmp_ctx("model=resnet44").cfg.model.checkpoint == "resnet44-014dd654.th"
    assert cfg.dataset.name == "cifar10_jpeg" and cfg.dataset.num_classes is None
    assert cfg.compression.name == "magnitude" and cfg.compression.sparsity.enabled
    assert cfg.compression.sparsity.end_epoch < cfg.train.epochs and cfg.export.int8
    assert (cfg.dataset.augment.crop_padding, cfg.dataset.augment.flip) == (4, True)
    dense = gmp_ctx("compression=none").cfg
    assert not dense.compression.sparsity.enabled and dense.train == cfg.train


def test_the_gmp_experiment_s_schedules_in_steps():
    poly = magnitude_pruner(gmp_ctx(), small_cnn())
    assert (poly.begin_step, poly.end_step, poly.frequency) == (0, 5 * 351, 50)
    assert poly.final_sparsity == 0.6 and poly.power == 3
    const = magnitude_pruner(gmp_ctx("compression.sparsity.end_epoch=0",
                                     "compression.sparsity.final_sparsity=0.7"), small_cnn())
    assert (const.begin_step, const.end_step, const.final_sparsity) == (0, 0, 0.7)
    # a schedule that would reach its final sparsity only after training: refused up front
    with pytest.raises(RsnetError, match="compression.sparsity.end_epoch=8"):
        magnitude_pruner(gmp_ctx("compression.sparsity.end_epoch=8"), small_cnn())
    assert magnitude_pruner(gmp_ctx("compression.sparsity.end_epoch=7.99"), small_cnn()).end_step == 2804


@pytest.mark.parametrize("final", [0.6, 0.7, 0.95])
def test_every_layer_reaches_the_final_sparsity(final):
    model = small_cnn()
    biases = {n: p.clone() for n, p in model.named_parameters() if not n.endswith("weight")
              or p.ndim == 1}  # biases and BN weights
    pruner = MagnitudePruner(model, 0.1, final, begin_step=0, end_step=40, frequency=10)
    for t in range(41):
        pruner.step(t)
    report = sparsity_report(model)
    for name, layer in prunable_layers(model).items():
        n = layer.weight.numel()
        assert abs(report[f"sparsity/layer/{name}"] - final) <= 1 / n + 1e-12, name
        assert pruner.masks[name].dtype == torch.bool
    assert abs(report["sparsity/overall"] - final) < 0.01
    for n, p in model.named_parameters():  # biases and BatchNorm are never pruned
        if n in biases:
            assert torch.equal(p, biases[n]), n


def test_ties_give_exact_counts():
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    nn.init.constant_(model[0].weight, 0.5)
    pruner = MagnitudePruner(model, 0.37, 0.37, begin_step=0, end_step=0)
    pruner.step(0)
    assert int((model[0].weight == 0).sum()) == 37
    # ties go by position: the first 37 flat indices are pruned
    flat = model[0].weight.flatten()
    assert (flat[:37] == 0).all() and (flat[37:] != 0).all()


def test_masks_survive_momentum_and_weight_decay():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pruner = MagnitudePruner(model, 0.5, 0.5, begin_step=0, end_step=0)
    train_steps(model, opt, pruner, range(1))  # prune at step 0
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    before = {n: l.weight.detach().clone() for n, l in pruner.layers.items()}
    # The momentum buffers of the pruned weights are non-zero: without apply() they would revive.
    train_steps(model, opt, pruner, range(1, 6), seed=1)
    for n, layer in pruner.layers.items():
        assert torch.equal(pruner.masks[n], masks[n])
        w = layer.weight.detach()
        assert (w[~masks[n]] == 0).all(), n  # exactly zero
        assert not torch.equal(w[masks[n]], before[n][masks[n]]), n  # the rest still trains


def test_without_apply_momentum_revives_pruned_weights():
    """The failure the pruner prevents (the thesis's eroding sparsity)."""
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    pruner = MagnitudePruner(model, 0.5, 0.5, begin_step=0, end_step=0)
    train_steps(model, opt, pruner, range(1))
    train_steps(model, opt, None, range(1, 3), seed=1)
    assert sparsity_report(model)["sparsity/overall"] < 0.4


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_masks_never_shrink(scope):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pruner = MagnitudePruner(model, 0.1, 0.9, begin_step=2, end_step=40, frequency=3, scope=scope)
    previous: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(0)
    updates = 0
    for t in range(45):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if pruner.step(t):
            updates += 1
            for n, old in previous.items():
                new = pruner.masks[n]
                assert not (new & ~old).any(), f"{n}: a pruned weight came back at step {t}"
            previous = {n: m.clone() for n, m in pruner.masks.items()}
    assert updates == len(range(2, 40, 3)) + 1


def test_state_dict_round_trip_restores_the_masks():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = MagnitudePruner(model, 0.2, 0.8, begin_step=0, end_step=20, frequency=5)
    train_steps(model, opt, pruner, range(8))

    buffer = io.BytesIO()  # through torch.save, as the training loop checkpoints
    torch.save({"model": model.state_dict(), "pruner": pruner.state_dict(),
                "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)

    resumed = small_cnn(seed=1)  # different initial weights, overwritten by the checkpoint
    resumed.load_state_dict(state["model"])
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(state["optimizer"])
    pruner2 = MagnitudePruner(resumed, 0.2, 0.8, begin_step=0, end_step=20, frequency=5)
    pruner2.load_state_dict(state["pruner"])
    assert pruner2.masks.keys() == pruner.masks.keys()
    for n in pruner.masks:
        assert torch.equal(pruner2.masks[n], pruner.masks[n])
    assert pruner2.last_update_step == 5 and pruner2.sparsity == pruner.sparsity
    assert not pruner2.step(7)  # the update of step 5 is not made again

    # Continuing both runs gives the same masks and weights.
    train_steps(model, opt, pruner, range(8, 25), seed=3)
    train_steps(resumed, opt2, pruner2, range(8, 25), seed=3)
    for n in pruner.masks:
        assert torch.equal(pruner2.masks[n], pruner.masks[n])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_load_state_dict_rejects_another_model():
    pruner = MagnitudePruner(small_cnn(), 0.5, 0.5, 0, 0)
    pruner.step(0)
    with pytest.raises(RsnetError, match="another model"):  # same names, other classifier shape
        MagnitudePruner(small_cnn(classes=7), 0.5, 0.5, 0, 0).load_state_dict(pruner.state_dict())
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2))
    with pytest.raises(RsnetError, match="does not prune"):
        MagnitudePruner(other, 0.5, 0.5, 0, 0).load_state_dict(pruner.state_dict())


def two_scale_model() -> nn.Module:
    """Two equal-size layers whose weights differ 100x in scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(20, 20))
        model[1].weight.copy_(0.01 * torch.randn(20, 20))
    return model


def test_global_scope_ranks_all_layers_together():
    layer_model, global_model = two_scale_model(), two_scale_model()
    MagnitudePruner(layer_model, 0.5, 0.5, 0, 0, scope="layer").step(0)
    MagnitudePruner(global_model, 0.5, 0.5, 0, 0, scope="global").step(0)
    by_layer, by_global = sparsity_report(layer_model), sparsity_report(global_model)
    # layer scope: each layer on its own
    assert by_layer["sparsity/layer/0"] == pytest.approx(0.5)
    assert by_layer["sparsity/layer/1"] == pytest.approx(0.5)
    # global scope: the small-weight layer goes first (|w| ~ 0.01 vs ~ 1)
    assert by_global["sparsity/layer/1"] > 0.95
    assert by_global["sparsity/layer/0"] < 0.05
    assert by_global["sparsity/overall"] == pytest.approx(0.5)
    assert by_layer["sparsity/overall"] == pytest.approx(0.5)


def test_classifier_and_excluded_layers_are_left_dense():
    model = small_cnn()
    pruner = MagnitudePruner(model, 0.5, 0.5, 0, 0, prune_classifier=False, exclude=["0"])
    assert set(pruner.layers) == {"3", "8"}
    pruner.step(0)
    report = sparsity_report(model)
    assert report["sparsity/layer/10"] == 0.0 and report["sparsity/layer/0"] == 0.0
    assert report["sparsity/layer/3"] == pytest.approx(0.5)
    assert set(MagnitudePruner(model, 0.5, 0.5, 0, 0).layers) == {"0", "3", "8", "10"}


def test_sparsity_report_keys_and_counts():
    model = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Flatten(),
                          nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
        model[3].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 3.0]]))
    report = sparsity_report(model)
    assert report == {"sparsity/layer/0": 0.5, "sparsity/layer/3": 0.75,
                      "sparsity/overall": 4 / 6, "sparsity/weights": 6,
                      "sparsity/nonzero_weights": 2}


def test_masks_follow_the_model_to_another_dtype_and_shared_weights_count_once():
    lin = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), lin)  # the same module twice
    assert list(prunable_layers(model)) == ["0"]
    pruner = MagnitudePruner(model, 0.5, 0.5, 0, 0)
    pruner.step(0)
    model.double()
    pruner.apply()
    assert int((lin.weight == 0).sum()) == 8


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_pruned_weights_stay_pruned_even_if_revived_or_asked_for_less(scope):
    model = small_cnn()
    pruner = MagnitudePruner(model, 0.5, 0.5, 0, 0, scope=scope)
    pruner.step(0)
    old = {n: m.clone() for n, m in pruner.masks.items()}
    with torch.no_grad():  # revive every weight with large magnitudes
        for layer in pruner.layers.values():
            layer.weight.copy_(10 + torch.rand_like(layer.weight))
    pruner.update_masks(0.3)  # a lower target cannot un-prune anything
    for n, layer in pruner.layers.items():
        assert torch.equal(pruner.masks[n], old[n]), n
        assert (layer.weight[~old[n]] == 0).all()


def test_a_sparse_model_s_onnx_files_compress_far_better_than_a_dense_one_s(tmp_path):
    """export/onnx_gzip_bytes and int8/gzip_bytes measure what the zeros save: the same model
    with 70 % of its conv / linear weights zeroed has files of the same plain size, but gzip
    keeps little more than its non-zero 30 % (random floats barely compress)."""
    from rsnet.deploy import export_onnx, gzip_bytes, quantize_int8
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    calib = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1)).numpy()]
    sizes = {}
    for kind in ("dense", "sparse"):
        if kind == "sparse":
            MagnitudePruner(model, 0.7, 0.7, begin_step=0, end_step=0).step(0)
            assert sparsity_report(model)["sparsity/overall"] == pytest.approx(0.7, abs=1e-3)
        fp32 = export_onnx(model, tmp_path / f"{kind}.onnx", 12)
        int8 = quantize_int8(fp32, tmp_path / f"{kind}_int8.onnx", calib)
        sizes[kind] = {f: (p.stat().st_size, gzip_bytes(p)) for f, p in (("fp32", fp32), ("int8", int8))}
    weight_bytes = 4 * sum(m.weight.numel() for m in prunable_layers(model).values())  # 20,992 floats
    dense, sparse = sizes["dense"], sizes["sparse"]
    assert sparse["fp32"][0] == dense["fp32"][0] > weight_bytes  # the zeros are stored
    assert 0.85 < dense["fp32"][1] / dense["fp32"][0] < 1.0  # random floats: little to gain
    assert sparse["fp32"][1] < 0.55 * dense["fp32"][1]  # the zeros compress
    assert sparse["fp32"][1] > 0.3 * 0.85 * weight_bytes  # ... the non-zero 30 % do not
    assert sparse["int8"][0] == pytest.approx(dense["int8"][0], rel=0.01)
    assert sparse["int8"][1] < 0.6 * dense["int8"][1]
    assert gzip_bytes(tmp_path / "sparse.onnx") == sparse["fp32"][1]  # deterministic: no timestamp

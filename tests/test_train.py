import shutil

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from rsnet.config import DatasetConfig, TrainConfig
from rsnet.data import build_data
from rsnet.errors import RsnetError
from rsnet.models.resnet_cifar import resnet_cifar
from rsnet.stages.train import fit_from_config
from rsnet.train import Runtime, fit, make_loader, predict, resolve_runtime


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def data():
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig(name="synthetic", source={
        "_target_": "rsnet.data.sources.Synthetic", "num_classes": 4, "train_per_class": 48,
        "test_per_class": 10, "size": 16})), {"num_classes": 3})
    return build_data(cfg)


def train_cfg(**kw) -> TrainConfig:
    base = compose_cfg("train=finetune", "train.epochs=3", "train.batch_size=32",
                       "train.precision=fp32", "train.channels_last=false").train
    return OmegaConf.merge(base, kw)


def tiny_model(num_classes=3):
    torch.manual_seed(0)
    return resnet_cifar(depth=8, num_classes=num_classes, stage_widths=(4, 8, 16))


def without_timings(history: list[dict]) -> list[dict]:
    """A history without its wall-clock columns (they differ between any two runs)."""
    return [{k: v for k, v in r.items() if k not in ("train/images_per_s", "train/epoch_s")}
            for r in history]


def test_training_lowers_the_loss_and_learns(data, tmp_path):
    model = tiny_model()
    cfg = train_cfg(epochs=6, optimizer={"lr": 0.05})
    hist = fit_from_config(model, data, cfg, resolve_runtime(cfg), tmp_path, seed=0)
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    assert max(r["val/acc"] for r in hist) > 0.5  # chance is 1/3
    assert {"val/acc_local", "val/acc_global", "val/acc_raw"} <= set(hist[0])


def test_fit_takes_built_objects_and_no_config(data, tmp_path):
    """The library's fit: any optimizer, schedule and loss a caller builds (here Adam, a step
    schedule and label smoothing), epochs as a number; the scheduler steps once per batch."""
    model = tiny_model()
    rt = resolve_runtime(train_cfg(precision="fp32"))
    loader = make_loader(data.train, data, 32, rt, train=True, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=len(loader), gamma=0.5)
    hist = fit(model, data, optimizer, scheduler, torch.nn.CrossEntropyLoss(label_smoothing=0.1),
               epochs=4, loader=loader, rt=rt, ckpt_dir=tmp_path, seed=0, select_on="val/loss")
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert [r["lr"] for r in hist] == pytest.approx([3e-3 * 0.5 ** k for k in (1, 2, 3, 4)])
    assert hist[-1]["train/loss"] < hist[0]["train/loss"]
    with pytest.raises(RsnetError, match="select_on"):
        fit(model, data, optimizer, scheduler, torch.nn.CrossEntropyLoss(), epochs=1,
            loader=loader, rt=rt, ckpt_dir=tmp_path / "b", seed=0, select_on="val/f1")


def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path):
    cfg = train_cfg(epochs=3)
    rt = resolve_runtime(cfg)
    full = tiny_model()
    hist_full = fit_from_config(full, data, cfg, rt, tmp_path / "a", seed=0)

    def kill_after_first(epoch, row):
        if epoch == 0:
            raise Interrupt

    killed = tiny_model()
    with pytest.raises(Interrupt):
        fit_from_config(killed, data, cfg, rt, tmp_path / "b", seed=0,
            on_epoch_end=kill_after_first)
    resumed = tiny_model()  # a fresh process would rebuild the model from scratch
    hist_resumed = fit_from_config(resumed, data, cfg, rt, tmp_path / "b", seed=0)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert without_timings(hist_full) == without_timings(hist_resumed)


class KillAtStep:
    """A StepHook that kills the run after the optimizer step ``at`` (global), once."""

    def __init__(self, at: int):
        self.at = at

    def step(self, global_step: int) -> None:
        if global_step == self.at:
            raise Interrupt

    def settled(self) -> bool:
        return True

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def dropout_model():  # draws from the global RNG every step: its state must be resumed too
    return torch.nn.Sequential(tiny_model(), torch.nn.Dropout(0.3))


def test_a_run_killed_in_mid_epoch_resumes_from_its_last_step(data, tmp_path):
    """With mid-epoch checkpoints (here after every step) a run killed inside epoch 2 goes on
    from the step it reached, not from the epoch's start, and ends bit-identical to an
    uninterrupted run: same weights, same history (the running loss and accuracy sums of the
    interrupted epoch included)."""
    cfg = train_cfg(epochs=2, checkpoint_every_min=1e-9)
    rt = resolve_runtime(cfg)
    full = dropout_model()
    hist_full = fit_from_config(full, data, cfg, rt, tmp_path / "a", seed=0)
    steps = len(make_loader(data.train, data, cfg.batch_size, rt, train=True, seed=0))
    kill_at = steps + 2  # the third step of epoch 2
    with pytest.raises(Interrupt):
        fit_from_config(dropout_model(), data, cfg, rt, tmp_path / "b", seed=0,
                        hooks=[KillAtStep(kill_at)])
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert saved["epoch"] == 0 and saved["partial"]["epoch"] == 1
    assert saved["partial"]["step"] == 2  # steps 0 and 1 of epoch 2 done and kept
    resumed = dropout_model()
    hist_resumed = fit_from_config(resumed, data, cfg, rt, tmp_path / "b", seed=0)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert without_timings(hist_full) == without_timings(hist_resumed)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["partial"] is None


def test_no_mid_epoch_checkpoint_when_it_is_off(data, tmp_path):
    cfg = train_cfg(epochs=1, checkpoint_every_min=0)
    rt = resolve_runtime(cfg)
    with pytest.raises(Interrupt):
        fit_from_config(tiny_model(), data, cfg, rt, tmp_path, seed=0, hooks=[KillAtStep(2)])
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("setting, pays, expected", [("auto", True, True), ("auto", False, False),
                                                     (True, False, True), ("false", True, False)])
def test_train_compile_auto_follows_the_model_family(setting, pays, expected):
    assert resolve_runtime(train_cfg(compile=setting), compile_pays=pays).compile is expected


def test_bad_train_compile_names_the_setting():
    with pytest.raises(RsnetError, match="train.compile"):
        resolve_runtime(train_cfg(compile="sometimes"))


@pytest.mark.integration
def test_compiled_training_resumes_like_eager(data, tmp_path):
    """torch.compile changes only the speed: killed after epoch 1 and resumed (compiled or
    eager), a compiled run ends within float tolerance of an uninterrupted eager one, with
    the compilation time recorded once."""
    cfg = train_cfg(epochs=2)
    eager_rt = resolve_runtime(cfg)
    compiled_rt = resolve_runtime(train_cfg(epochs=2, compile=True))
    eager = tiny_model()
    fit_from_config(eager, data, cfg, eager_rt, tmp_path / "eager", seed=0)

    def kill_after_first(epoch, row):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_from_config(tiny_model(), data, cfg, compiled_rt, tmp_path / "c", seed=0,
                        on_epoch_end=kill_after_first)
    shutil.copytree(tmp_path / "c", tmp_path / "c_eager")
    for rt, folder in ((compiled_rt, "c"), (eager_rt, "c_eager")):
        resumed = tiny_model()
        hist = fit_from_config(resumed, data, cfg, rt, tmp_path / folder, seed=0)
        assert "train/first_step_s" in hist[0]  # epoch 1 ran compiled, in the killed process
        assert ("train/first_step_s" in hist[1]) is rt.compile  # the resuming process compiled again
        for (name, a), b in zip(eager.state_dict().items(), resumed.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name


def test_best_epoch_weights_are_returned(data, tmp_path):
    cfg = train_cfg(epochs=3)
    rt = resolve_runtime(cfg)
    model = tiny_model()
    hist = fit_from_config(model, data, cfg, rt, tmp_path, seed=0)
    best = max(hist, key=lambda r: r["val/acc"])
    logits = predict(model, data.val, data, rt, 64)
    assert (logits.argmax(1) == data.val.targets).float().mean().item() == pytest.approx(best["val/acc"])


class SettledIn:
    """A StepHook settled only in the given 0-based epochs (``steps`` optimizer steps each)."""

    def __init__(self, epochs: set[int], steps: int):
        self.epochs, self.steps, self.epoch = epochs, steps, 0

    def step(self, global_step: int) -> None:
        self.epoch = global_step // self.steps

    def settled(self) -> bool:
        return self.epoch in self.epochs

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_only_epochs_that_end_settled_can_be_selected(data, tmp_path):
    """A hook still changing the model (a sparsity ramp) makes its epochs unselectable: here only
    epoch 1 is settled, so its weights come back although later epochs train on (lr 0.05)."""
    from rsnet.report import history_metrics
    cfg = train_cfg(epochs=3, optimizer={"lr": 0.05})
    rt = resolve_runtime(cfg)
    steps = len(make_loader(data.train, data, cfg.batch_size, rt, train=True, seed=0))
    model = tiny_model()
    hist = fit_from_config(model, data, cfg, rt, tmp_path, seed=0, hooks=[SettledIn({0}, steps)])
    assert [r.get("train/selectable", 1) for r in hist] == [1, 0, 0]
    logits = predict(model, data.val, data, rt, 64)
    assert (logits.argmax(1) == data.val.targets).float().mean().item() == pytest.approx(hist[0]["val/acc"])
    last = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), last.values()))
    assert history_metrics(hist, "val/acc")["val/best_epoch"] == 1
    assert history_metrics(hist, "val/acc")["val/acc"] == hist[0]["val/acc"]
    never = [{**r, "train/selectable": 0} for r in hist]  # fit then keeps the last epoch
    assert history_metrics(never, "val/acc")["val/best_epoch"] == 3


def test_non_finite_loss_stops_with_a_clear_message(data, tmp_path):
    cfg = train_cfg(epochs=3, optimizer={"lr": 1e30})
    with pytest.raises(RsnetError, match="train.optimizer.lr"):
        fit_from_config(tiny_model(), data, cfg, resolve_runtime(cfg), tmp_path, seed=0)


def test_bf16_channels_last_training_runs(data, tmp_path):
    cfg = train_cfg(epochs=1, precision="bf16", channels_last=True)
    rt = resolve_runtime(cfg)
    model = rt.prepare(tiny_model())
    hist = fit_from_config(model, data, cfg, rt, tmp_path, seed=0)
    assert torch.isfinite(torch.tensor(hist[0]["train/loss"]))


@pytest.mark.parametrize("flags, dtype", [({"avx512f": True}, None),
                                          ({"avx512_bf16": True}, torch.bfloat16),
                                          ({"amx_bf16": True}, torch.bfloat16), ({}, None)])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, flags, dtype):
    import rsnet.hardware
    monkeypatch.setattr(rsnet.hardware, "cpu_flags", lambda: flags)
    assert resolve_runtime(train_cfg(precision="auto", device="cpu")).autocast_dtype == dtype


def test_bad_precision_names_the_setting():
    with pytest.raises(RsnetError, match="train.precision"):
        resolve_runtime(train_cfg(precision="int3"))


def test_fp16_on_the_cpu_is_refused_naming_the_setting():
    with pytest.raises(RsnetError, match="train.precision=fp16 needs a CUDA device"):
        resolve_runtime(train_cfg(precision="fp16", device="cpu"))


def test_fp16_grad_scaler_state_is_checkpointed_and_resumed(data, tmp_path):
    """The fp16 path (autocast + GradScaler) as on CUDA, run here on the CPU, where torch
    supports it too (rsnet's settings refuse fp16 on the CPU: bf16 is the fast choice there)."""
    cfg = train_cfg(epochs=2)
    rt = Runtime(torch.device("cpu"), torch.float16, channels_last=False)
    full = tiny_model()
    fit_from_config(full, data, cfg, rt, tmp_path / "a", seed=0)
    scaler = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["scaler"]
    assert scaler["scale"] > 0 and scaler["growth_interval"] == 2000

    def kill_after_first(epoch, row):
        if epoch == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_from_config(tiny_model(), data, cfg, rt, tmp_path / "b", seed=0, on_epoch_end=kill_after_first)
    after_one = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["scaler"]
    resumed = tiny_model()
    fit_from_config(resumed, data, cfg, rt, tmp_path / "b", seed=0)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["scaler"] == scaler
    assert after_one["scale"] > 0


def test_fp32_and_bf16_leave_the_grad_scaler_off(data, tmp_path):
    cfg = train_cfg(epochs=1)
    fit_from_config(tiny_model(), data, cfg, resolve_runtime(cfg), tmp_path, seed=0)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["scaler"] == {}


def test_auxiliary_heads_add_their_weighted_loss():
    from rsnet.train import _loss

    crit = torch.nn.CrossEntropyLoss()
    main, aux, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert torch.allclose(_loss(crit, (main, aux), y, 0.3), crit(main, y) + 0.3 * crit(aux, y))
    assert torch.allclose(_loss(crit, main, y, 0.3), crit(main, y))


def test_distillation_pulls_the_student_toward_the_teacher(data, tmp_path):
    from rsnet.distill import DistillationLoss, subset_teacher_logits

    cfg = train_cfg(epochs=2, optimizer={"lr": 0.05})
    rt = resolve_runtime(cfg)
    teacher = tiny_model(num_classes=4)  # the C-way baseline of the synthetic data
    fit_from_config(teacher, build_data(OmegaConf.merge(OmegaConf.structured(DatasetConfig(
        name="s", source={"_target_": "rsnet.data.sources.Synthetic", "num_classes": 4,
                          "train_per_class": 48, "test_per_class": 10, "size": 16})), {})),
        cfg, rt, tmp_path / "t", seed=0)
    kd_only = DistillationLoss(teacher, temperature=2.0, alpha=1.0, subset=data.subset)
    x = next(iter(__import__("rsnet.train", fromlist=["make_loader"]).make_loader(
        data.val, data, 64, rt, train=False)))[0]
    target = subset_teacher_logits(teacher.eval()(x), data.subset).softmax(1)

    def gap(model):
        return (model.eval()(x).softmax(1) - target).abs().mean().item()

    student = tiny_model()
    before = gap(student)
    fit_from_config(student, data, cfg, rt, tmp_path / "s", seed=0, distill=kd_only)
    assert gap(student) < 0.5 * before


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_checkpoint_interval_names_the_setting(value):
    from rsnet.pipeline import check_settings
    with pytest.raises(RsnetError, match="train.checkpoint_every_min"):
        check_settings(compose_cfg(f"train.checkpoint_every_min={value}"))

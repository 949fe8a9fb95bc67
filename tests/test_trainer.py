"""The trainer: exact resume, atomic checkpoints, metadata, loss plot, refusals."""

import os

import pytest
import torch
from PIL import Image

from onestep_sr.files import tensors as tensor_files
from onestep_sr.files.tensors import load_tensors, read_metadata
from onestep_sr.testing.toy import gaussian_mixture, mixture_batches, StraightCoupling, ToyFlowMapNet
from onestep_sr.training.trainer import CHECKPOINT_NAME, LOSS_CURVE_NAME, TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

METADATA = {"family": "two_time", "start_mode": "noise", "scales": [4, 8], "data_manifest_hash": "c0ffee"}


def _net(seed=0):
    torch.manual_seed(seed)
    return ToyFlowMapNet(hidden=32, depth=2)


def _trainer(out, steps, objective="shortcut", batches=None, **config):
    config = {"lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 0, "progress": False, **config}
    return Trainer(_net(), objective, batches or mixture_batches(32),
                   TrainConfig(output_dir=str(out), steps=steps, **config), metadata=METADATA)


def _assert_same_state(a: Trainer, b: Trainer):
    for x, y in [(a.net, b.net), (a.ema_net, b.ema_net)]:
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    assert a.losses == b.losses and a.step == b.step


@pytest.mark.parametrize("objective", ["shortcut", "meanflow"])
def test_resumed_run_equals_an_uninterrupted_run(tmp_path, objective):
    straight = _trainer(tmp_path / "straight", 12, objective)
    straight.train()
    first = _trainer(tmp_path / "split", 5, objective)
    first.train()
    resumed = _trainer(tmp_path / "split", 12, objective)
    assert resumed.step == 5
    resumed.train()
    _assert_same_state(straight, resumed)
    assert straight.net.state_dict().keys() and resumed.step == 12


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, n=40):
        generator = torch.Generator().manual_seed(0)
        self.x0, self.x1 = gaussian_mixture(n, generator), torch.randn(n, 2, generator=generator)

    def __len__(self):
        return len(self.x0)

    def __getitem__(self, i):
        return {"x0": self.x0[i], "x1": self.x1[i]}


def test_resume_with_a_shuffled_dataloader_across_epochs(tmp_path):
    """10 batches per epoch; the split run stops in the second epoch and resumes in the right place."""
    def loader():
        return torch.utils.data.DataLoader(PairDataset(), batch_size=4, shuffle=True)

    straight = _trainer(tmp_path / "straight", 14, batches=loader(), grad_accumulation=2)
    straight.train()
    _trainer(tmp_path / "split", 6, batches=loader(), grad_accumulation=2).train()
    resumed = _trainer(tmp_path / "split", 14, batches=loader(), grad_accumulation=2)
    resumed.train()
    _assert_same_state(straight, resumed)


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, 4)
    trainer.train()
    path = tmp_path / CHECKPOINT_NAME
    before = path.read_bytes()

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the run is killed in the middle of the write

    monkeypatch.setattr(tensor_files, "save_file", dying_save)
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    resumed = _trainer(tmp_path, 6)
    assert resumed.step == 4


def test_metadata_round_trips_and_is_json(tmp_path):
    trainer = _trainer(tmp_path, 3, objective="flowsr_consistency")
    trainer.metadata["scales"] = [2, 4, 8]  # updated during the run: the next checkpoint records it
    trainer.train()
    meta = read_metadata(tmp_path / CHECKPOINT_NAME)
    assert meta["step"] == 3 and meta["objective"] == "flowsr_consistency"
    assert meta["objective_options"] == {"fast_steps": 4, "slow_steps": 1000, "student_scheduler": "slow",
                                         "hr_weight": 1.0, "flow_weight": 1.0}
    assert meta["family"] == "two_time" and meta["start_mode"] == "noise"
    assert meta["scales"] == [2, 4, 8] and meta["data_manifest_hash"] == "c0ffee"
    assert meta["config"]["steps"] == 3 and meta["config"]["seed"] == 0
    assert meta["precision"] == trainer.accelerator.mixed_precision in ("no", "bf16")

    exported = trainer.export_weights(tmp_path / "weights.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert exported.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user writes
    tensors, meta = load_tensors(exported)
    assert meta["weights"] == "ema" and meta["step"] == 3
    assert tensors.keys() == trainer.ema_net.state_dict().keys()
    for name, value in trainer.ema_net.state_dict().items():
        assert torch.equal(tensors[name], value)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trainer.export_weights(exported)


def test_loss_curve_png_is_written(tmp_path):
    _trainer(tmp_path, 8).train()
    image = Image.open(tmp_path / LOSS_CURVE_NAME)
    assert image.format == "PNG" and image.size == (720, 400)
    colours = {c for _, c in image.getcolors(maxcolors=1 << 16)}
    assert (31, 119, 180) in colours  # the smoothed curve is drawn


def test_refusals_name_the_fix(tmp_path):
    _trainer(tmp_path, 2).train()
    with pytest.raises(FileExistsError, match="resume=True"):
        _trainer(tmp_path, 4, resume=False)
    with pytest.raises(ValueError, match="objective 'shortcut'"):
        _trainer(tmp_path, 4, objective="meanflow")
    with pytest.raises(ValueError, match="reserved|written by the trainer"):
        Trainer(_net(), "shortcut", mixture_batches(8), TrainConfig(output_dir=str(tmp_path / "x")),
                metadata={"step": 3})
    with pytest.raises(ValueError, match="grad_accumulation"):
        TrainConfig(output_dir=str(tmp_path), grad_accumulation=0)


def test_a_run_without_ema_takes_targets_from_the_net_and_resumes(tmp_path):
    straight = _trainer(tmp_path / "straight", 6, ema_decay=None)
    straight.train()
    assert straight.ema_net is None
    _trainer(tmp_path / "split", 3, ema_decay=None).train()
    resumed = _trainer(tmp_path / "split", 6, ema_decay=None)
    resumed.train()
    for p, q in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="ema=False"):
        resumed.export_weights(tmp_path / "w.safetensors")
    assert resumed.export_weights(tmp_path / "w.safetensors", ema=False).exists()


def test_training_lowers_the_loss(tmp_path):
    """A deterministic source (x1 = a x0 + c) makes the flow-matching optimum zero."""
    problem = StraightCoupling()
    trainer = _trainer(tmp_path, 60, objective="flow_matching", lr=3e-3,
                       batches=lambda generator: problem.sample(32, 2, generator))
    trainer.train()
    first, last = sum(trainer.losses[:10]) / 10, sum(trainer.losses[-10:]) / 10
    assert last < 0.3 * first


def test_cosine_schedule_values_and_refusal(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path), steps=10, lr=0.2, lr_schedule="cosine")
    assert [config.lr_at(step) for step in (0, 5, 10)] == pytest.approx([0.2, 0.1, 0.0], abs=1e-12)
    assert TrainConfig(output_dir=str(tmp_path), steps=10, lr=0.2).lr_at(7) == 0.2
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(output_dir=str(tmp_path), lr_schedule="linear")


def test_an_interrupted_cosine_run_resumes_on_the_same_schedule(tmp_path):
    straight = _trainer(tmp_path / "straight", 12, lr_schedule="cosine")
    straight.train()
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(straight.config.lr_at(11))

    draws, calls = mixture_batches(32), []

    def interrupted(generator):  # Ctrl-C during step 8, three steps after the checkpoint at 5
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return draws(generator)

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "split", 12, batches=interrupted, lr_schedule="cosine", checkpoint_every=5).train()
    resumed = _trainer(tmp_path / "split", 12, lr_schedule="cosine")
    assert resumed.step == 5
    resumed.train()
    _assert_same_state(straight, resumed)


def test_auto_precision_is_bf16_exactly_where_the_device_computes_it_natively(monkeypatch):
    from onestep_sr.models.precision import native_bf16, resolve_precision

    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        assert native_bf16("cpu") is (expected == "bf16")
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert not native_bf16("mps") and resolve_precision("auto", "mps") == "fp16"  # Apple GPUs: fp16
    with pytest.raises(ValueError, match="precision must be one of .*'fp16'"):
        resolve_precision("half", "cpu")


def test_training_leaves_the_global_rng_as_it_found_it(tmp_path):
    """A run reseeds torch's global RNG per step (dropout resumes exactly) inside a fork: inside a ComfyUI
    process, what later nodes draw must not depend on whether a training node ran before them."""
    torch.manual_seed(1234)
    expected = torch.rand(4)
    trainer = _trainer(tmp_path / "run", 3)
    torch.manual_seed(1234)
    trainer.train()
    assert torch.equal(torch.rand(4), expected)


def test_on_step_reports_every_step_and_stops_the_run_when_it_raises(tmp_path):
    seen = []
    _trainer(tmp_path / "all", 3).train(on_step=seen.append)
    assert seen == [0, 1, 2]

    def stop_after_two(done):
        if done == 2:
            raise KeyboardInterrupt

    stopped = _trainer(tmp_path / "stopped", 5)
    with pytest.raises(KeyboardInterrupt):
        stopped.train(on_step=stop_after_two)
    assert stopped.step == 2 and len(stopped.losses) == 2

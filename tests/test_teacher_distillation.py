"""Known answers for the distillation experiment's data (benchmarks/teacher_distillation.py): the pool
keeps HR, teacher output and LR of one place together, and the batches mix targets as asked."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import teacher_distillation as distillation  # noqa: E402

from onestep_sr.training.sr_data import ImageCrops  # noqa: E402


def nearest_x4(lr: torch.Tensor) -> torch.Tensor:
    return lr.repeat_interleave(4, -2).repeat_interleave(4, -1)


def box_pool():
    """A pool whose LR is the exact 4x4 box mean of its HR and whose teacher is HR halved."""
    hr = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return {"hr": hr, "teacher": hr / 2, "lr": F.avg_pool2d(hr, 4)}


@pytest.mark.parametrize("top, left, turns, flip", [(0, 0, 0, False), (8, 20, 1, True), (32, 4, 2, False),
                                                     (12, 36, 3, True)])
def test_pool_window_keeps_hr_teacher_and_lr_aligned(top, left, turns, flip):
    pool = box_pool()
    hr, teacher, lr = distillation.pool_window(pool, 1, top, left, 24, turns, flip)
    assert hr.shape == teacher.shape == (3, 24, 24) and lr.shape == (3, 6, 6)
    torch.testing.assert_close(F.avg_pool2d(hr[None], 4)[0], lr)  # a window shifted by one LR pixel fails
    torch.testing.assert_close(teacher, hr / 2)
    unturned = hr.flip(-1) if flip else hr
    torch.testing.assert_close(torch.rot90(unturned, -turns, dims=(-2, -1)), pool["hr"][1, :, top:top + 24, left:left + 24])


def test_pool_window_refuses_offsets_off_the_lr_grid():
    with pytest.raises(ValueError, match="multiples of 4"):
        distillation.pool_window(box_pool(), 0, 2, 0, 24, 0, False)


def test_build_pool_cuts_the_margin_from_all_three_and_is_seeded():
    image = torch.rand(3, 80, 80, generator=torch.Generator().manual_seed(1))
    sampler = ImageCrops([image])
    pool = distillation.build_pool(nearest_x4, sampler, count=10, seed=3, hr_size=32, margin=8)
    assert pool["hr"].shape == pool["teacher"].shape == (10, 3, 16, 16) and pool["lr"].shape == (10, 3, 4, 4)
    assert all(value.dtype == torch.float16 for value in pool.values())
    torch.testing.assert_close(pool["teacher"], nearest_x4(pool["lr"]))  # the teacher saw the LR of the same place
    again = distillation.build_pool(nearest_x4, sampler, count=10, seed=3, hr_size=32, margin=8)
    assert all(torch.equal(pool[key], again[key]) for key in pool)
    other = distillation.build_pool(nearest_x4, sampler, count=10, seed=4, hr_size=32, margin=8)
    assert not torch.equal(pool["hr"], other["hr"])
    with pytest.raises(ValueError, match="multiples of 4"):
        distillation.build_pool(nearest_x4, sampler, count=2, hr_size=32, margin=6)


@pytest.mark.parametrize("hr_mix", [0.0, 0.3, 1.0])
def test_distillation_batches_mix_teacher_and_hr_targets_and_append_the_clean_samples(hr_mix):
    pool = {"hr": torch.full((2, 3, 32, 32), 0.75), "teacher": torch.full((2, 3, 32, 32), 0.25),
            "lr": torch.full((2, 3, 8, 8), 0.5)}

    def clean(generator):
        return {"x0": torch.full((2, 3, 16, 16), 5.0), "x1": torch.full((2, 3, 16, 16), 6.0),
                "cond": torch.full((2, 3, 16, 16), 6.0)}

    draw = distillation.distillation_batches(pool, hr_mix, clean, teacher_samples=3, crop=16)
    batch = draw(torch.Generator().manual_seed(0))
    assert batch["x0"].shape == (5, 3, 16, 16)
    is_clean = batch["x0"][:, 0, 0, 0] == 5.0
    assert int(is_clean.sum()) == 2
    target = 2 * ((1 - hr_mix) * 0.25 + hr_mix * 0.75) - 1
    torch.testing.assert_close(batch["x0"][~is_clean], torch.full((3, 3, 16, 16), target))
    torch.testing.assert_close(batch["x1"][~is_clean], torch.zeros(3, 3, 16, 16))  # LR 0.5 -> 0 in [-1, 1]
    assert torch.equal(batch["x1"][is_clean], torch.full((2, 3, 16, 16), 6.0))
    again = draw(torch.Generator().manual_seed(0))
    assert all(torch.equal(batch[key], again[key]) for key in batch)
    orders = {tuple(draw(torch.Generator().manual_seed(seed))["x0"][:, 0, 0, 0].tolist()) for seed in range(8)}
    assert len(orders) > 1, "the clean samples must not always sit in the same places"
    assert np.isclose(float(batch["cond"][~is_clean].mean()), 0.0)

"""The metrics score real held-out canvases high and noise low; the judge is the stored one."""

from __future__ import annotations

import torch
from fieldkit_digits.buckets import GlobalEditBucket, LocalEditBucket, T2IBucket
from fieldkit_digits.judge import judge
from fieldkit_digits.metrics import (
    EditMetric,
    T2IMetric,
    edit_score,
    frechet_distance,
    psnr,
)
from fieldkit_digits.params import (
    EditMetricParams,
    GlobalEditParams,
    LocalEditParams,
    T2IMetricParams,
    T2IParams,
)

from fieldkit.data import Batch


def test_classifier_reads_held_out_digits():
    assert judge().heldout_accuracy() > 0.97


def test_t2i_metric_real_canvases_high_noise_low():
    batch = T2IBucket(T2IParams(split="heldout")).sample(128, torch.Generator().manual_seed(0))
    metric = T2IMetric(T2IMetricParams(seed=1))  # real canvases other than the reference draw
    real = metric(batch.target, batch)
    assert real["accuracy"] > 0.9 and real["identity"] > 0.9 and real["count"] > 0.95
    noise = metric(torch.randn_like(batch.target), batch)
    assert noise["accuracy"] < 0.2
    assert noise["fd"] > 5 * real["fd"]
    assert noise["realism"] < real["realism"] - 1.0
    assert real["score"] == real["accuracy"]
    # swapping the sides of two-digit canvases keeps identity and count, loses position
    pairs = (batch.cond["digits"] != 10).all(1) & (batch.cond["digits"][:, 0] != batch.cond["digits"][:, 1])
    swapped = batch.target.clone()
    swapped[pairs] = torch.cat([batch.target[pairs][..., 8:], batch.target[pairs][..., :8]], -1)
    sub = Batch(batch.cond.index(pairs.nonzero().squeeze(1)), None)
    out = metric(swapped[pairs], sub)
    assert out["identity"] > 0.9 and out["position"] < 0.1


def test_edit_metric_ground_truth_high_noise_and_source_low():
    metric = EditMetric(EditMetricParams(per_op=True))
    for bucket in (
        LocalEditBucket(LocalEditParams(split="heldout")),
        GlobalEditBucket(GlobalEditParams(split="heldout")),
    ):
        batch = bucket.sample(128, torch.Generator().manual_seed(0))
        truth = metric(batch.target, batch)
        assert truth["success"] > 0.9 and truth["psnr"] > 45 and truth["score"] > 0.9
        noise = metric(torch.randn_like(batch.target), batch)
        assert noise["score"] < 0.1
        unedited = metric(batch.cond["source"], batch)  # doing nothing preserves, but does not succeed
        assert unedited["success"] < 0.2 and unedited["score"] < 0.2
        assert any(k.startswith("success/") for k in truth)


def test_formulas():
    a = torch.zeros(2, 1, 8, 8)
    assert torch.allclose(psnr(a, a + 0.2), torch.full((2,), 20.0))  # 0.1 in [0, 1] units: 20 dB
    assert psnr(a, a).eq(50).all()
    assert edit_score(torch.tensor([True, True, False]), torch.tensor([30.0, 20.0, 40.0])).tolist() == [
        1,
        0.5,
        0,
    ]
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) < 1e-6
    assert abs(frechet_distance(x, x + 2) - 16) < 1e-3

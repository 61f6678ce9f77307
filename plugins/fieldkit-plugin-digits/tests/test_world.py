"""The world's canvases, splits and edits are exact."""

from __future__ import annotations

import torch
from fieldkit_digits.buckets import GlobalEditBucket, LocalEditBucket, T2IBucket
from fieldkit_digits.params import GlobalEditParams, LocalEditParams, T2IParams
from fieldkit_digits.world import (
    BLANK,
    GLOBAL_OPS,
    DigitPool,
    all_digits,
    dilate,
    global_edit,
    halves,
    side_of,
    split_indices,
)


def test_held_out_digits_are_never_in_train():
    split = split_indices(0)
    train, held = set(split["train"].tolist()), set(split["heldout"].tolist())
    assert not train & held
    assert len(train) + len(held) == len(all_digits()[1]) == 1797
    labels = all_digits()[1]
    for c in range(10):  # every class is in both splits, about 20% held out
        n_held, n_all = int((labels[split["heldout"]] == c).sum()), int((labels == c).sum())
        assert abs(n_held / n_all - 0.2) < 0.02
    assert torch.equal(split["heldout"], split_indices(0)["heldout"])  # fixed by seed
    assert not torch.equal(split["heldout"], split_indices(1)["heldout"])
    # The held-out digits halve into validation and test, disjoint, every class in both.
    validation, test = set(split["validation"].tolist()), set(split["test"].tolist())
    assert not validation & test and validation | test == held
    for c in range(10):
        assert (labels[split["validation"]] == c).any() and (labels[split["test"]] == c).any()


def test_validation_and_test_evaluation_read_disjoint_digits():
    pools = {name: T2IBucket(T2IParams(eval_split=name)).evaluation().pool for name in ("validation", "test")}
    a, b = (p.images.flatten(1) for p in pools.values())
    assert not (a[:, None] == b[None]).all(-1).any()
    assert T2IBucket(T2IParams()).evaluation().pool.split == "heldout"  # the default is unchanged


def test_buckets_draw_only_their_split():
    held = DigitPool("heldout")
    train_images = DigitPool("train").images.flatten(1)
    t2i = T2IBucket(T2IParams(split="heldout"))
    batch = t2i.sample(64, torch.Generator().manual_seed(0))
    sides = halves(batch.target).flatten(1)
    non_blank = sides[(sides != -1).any(1)]
    in_held = (non_blank[:, None] == held.images.flatten(1)[None]).all(-1).any(1)
    in_train = (non_blank[:, None] == train_images[None]).all(-1).any(1)
    assert in_held.all() and not in_train.any()


def test_t2i_targets_match_their_layout():
    batch = T2IBucket(T2IParams()).sample(64, torch.Generator().manual_seed(1))
    assert batch.target.shape == (64, 1, 8, 16)
    blank = (halves(batch.target) == -1).flatten(1).all(1).reshape(64, 2)
    assert torch.equal(blank, batch.cond["digits"] == BLANK)
    assert (batch.cond["source"] == 0).all()


def test_local_edit_keeps_the_other_side_pixel_identical():
    batch = LocalEditBucket(LocalEditParams()).sample(128, torch.Generator().manual_seed(2))
    src, tgt, side = batch.cond["source"], batch.target, batch.cond["side"]
    for i in range(128):
        s = int(side[i])
        assert torch.equal(side_of(tgt[i : i + 1], 1 - s), side_of(src[i : i + 1], 1 - s))
        assert not torch.equal(side_of(tgt[i : i + 1], s), side_of(src[i : i + 1], s))
    mask = batch.cond["mask"]
    assert torch.equal((mask * (tgt - src)), tgt - src)  # only the masked side changes
    assert set(batch.cond["op"].tolist()) == {0, 1, 2}


def test_global_edits_are_exact():
    batch = GlobalEditBucket(GlobalEditParams()).sample(64, torch.Generator().manual_seed(3))
    src = batch.cond["source"]
    for k, op in enumerate(GLOBAL_OPS):
        rows = batch.cond["op"] == k
        assert torch.equal(batch.target[rows], global_edit(src[rows], op))
    x = src
    for op in ("invert", "mirror", "flip"):
        assert torch.equal(global_edit(global_edit(x, op), op), x)  # involutions
    assert torch.equal(global_edit(x, "mirror"), x.flip(-1))
    bold = dilate(x)
    assert (bold >= x).all() and (bold > x).any()
    assert torch.equal(dilate(bold), dilate(dilate(x)))
    # dilation never bleeds across the middle: an empty side stays empty
    one_side = x.clone()
    one_side[..., 8:] = -1
    assert (dilate(one_side)[..., 8:] == -1).all()

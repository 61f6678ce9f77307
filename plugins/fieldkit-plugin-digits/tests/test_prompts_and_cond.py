"""Prompts parse to the labels the buckets asked for; Conds have fixed shapes and CFG nulls."""

from __future__ import annotations

import pytest
import torch
from fieldkit_digits.buckets import GlobalEditBucket, LocalEditBucket, T2IBucket
from fieldkit_digits.params import GlobalEditParams, LocalEditParams, T2IParams
from fieldkit_digits.prompts import TEMPLATES, TOKENS, Prompt, all_texts, parse, phrasings, render, text_bank
from fieldkit_digits.world import BLANK, GLOBAL_OPS, LOCAL_OPS, SIDES

from fieldkit import Cond


def test_every_prompt_parses_back_to_its_slots():
    texts = all_texts()
    assert texts[0] == "" and len(texts) == len(set(texts))
    for text in texts[1:]:
        p = parse(text)
        templates = phrasings(p.kind, "train") + phrasings(p.kind, "heldout")
        assert any(render(t, p) == text for t in templates)
    assert parse("a 3 on the left and a 7 on the right") == Prompt("pair", a=3, b=7)
    assert parse("a 7 on the right and a 3 on the left") == Prompt("pair", a=3, b=7)
    assert parse("a single 5 on the right") == Prompt("single", d=5, side=1)
    with pytest.raises(ValueError):
        parse("a cat on the left")


def test_held_out_phrasings_are_not_train_phrasings():
    for train, held in TEMPLATES.values():
        assert held and not set(train) & set(held)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_bucket_prompts_ask_for_what_the_targets_show(split):
    """``split`` here picks the phrasings (and the digits: every combination is drawn)."""
    bank = text_bank()
    gen = torch.Generator().manual_seed(0)
    t2i = T2IBucket(T2IParams(split=split, phrasing=split)).sample(64, gen)
    for row, digits in zip(t2i.cond["prompt"].tolist(), t2i.cond["digits"].tolist(), strict=True):
        text = bank.texts[row]
        assert text in {render(t, parse(text)) for t in phrasings(parse(text).kind, split)}
        p = parse(text)
        if p.kind == "pair":
            assert digits == [p.a, p.b]
        else:
            assert digits[p.side] == p.d and digits[1 - p.side] == BLANK
    local = LocalEditBucket(LocalEditParams(split=split, phrasing=split)).sample(64, gen)
    for i, row in enumerate(local.cond["prompt"].tolist()):
        p = parse(bank.texts[row])
        side = int(local.cond["side"][i])
        assert p.kind == LOCAL_OPS[int(local.cond["op"][i])] and p.side == side
        asked = int(local.cond["digits"][i, side])
        assert asked == (BLANK if p.kind == "remove" else p.b)
        described = parse(bank.texts[int(local.cond["target_prompt"][i])])
        left, right = local.cond["digits"][i].tolist()
        if described.kind == "pair":
            assert [described.a, described.b] == [left, right]
        else:
            assert [left, right][described.side] == described.d and BLANK in (left, right)
        row = bank.index(bank.texts[int(local.cond["target_prompt"][i])])
        assert torch.equal(local.cond["target_pooled"][i], bank.pooled[row])
    glob = GlobalEditBucket(GlobalEditParams(split=split, phrasing=split)).sample(32, gen)
    for row, op in zip(glob.cond["prompt"].tolist(), glob.cond["op"].tolist(), strict=True):
        assert parse(bank.texts[row]).kind == GLOBAL_OPS[op]
    assert SIDES == ("left", "right")


def test_conds_have_fixed_shapes_nulls_and_concatenate():
    gen = torch.Generator().manual_seed(0)
    buckets = [
        T2IBucket(T2IParams()),
        LocalEditBucket(LocalEditParams()),
        GlobalEditBucket(GlobalEditParams()),
    ]
    for bucket in buckets:
        a, b = bucket.sample(3, gen), bucket.sample(5, gen)
        c = a.cond
        assert bucket.shape == (1, 8, 16) and a.target.shape == (3, 1, 8, 16)
        assert c["text"].shape == (3, TOKENS, 384) and c["text_mask"].shape == (3, TOKENS)
        assert c["pooled"].shape == (3, 384) and c["source"].shape == (3, 1, 8, 16)
        assert c["mask"].shape == (3, 1, 8, 16) and c["digits"].shape == (3, 2)
        assert set(c.nulls) == {"text", "text_mask", "pooled"}
        u = c.uncond()
        assert (u["prompt"] == c["prompt"]).all()  # bookkeeping keys are kept ...
        assert torch.equal(u["source"], c["source"])  # ... and so is an edit's source
        empty = text_bank().rows(torch.tensor([0]))
        assert torch.equal(u["pooled"], empty["pooled"].expand(3, -1))
        assert u["text_mask"].sum(1).tolist() == [2, 2, 2]  # [CLS] [SEP]
        assert Cond.cat([a.cond, b.cond]).batch_size == 8
    dropped = T2IBucket(T2IParams(drop=0.5)).sample(200, gen)
    assert 60 < int((dropped.cond["prompt"] == 0).sum()) < 140
    held = T2IBucket(T2IParams(drop=0.5)).evaluation()
    assert held.params.split == "heldout" and held.params.drop == 0.0 and held.params.phrasing == "heldout"
    assert T2IBucket(T2IParams(eval_phrasing="train")).evaluation().params.phrasing == "train"
    assert all(len(train) == 8 and len(held) == 2 for train, held in TEMPLATES.values())


def test_targets_limit_and_noise_restrict_only_the_targets():
    from fieldkit_digits.params import TargetParams

    gen = torch.Generator().manual_seed(0)
    limited = LocalEditBucket(LocalEditParams(targets=TargetParams(limit=4)))
    batch = limited.sample(64, gen)
    assert batch.target is not None and len({tuple(t.flatten().tolist()) for t in batch.target}) <= 4
    assert len(set(batch.cond["prompt"].tolist())) <= 4  # the pairs are fixed (condition and target)
    again = LocalEditBucket(LocalEditParams(targets=TargetParams(limit=4))).sample(64, gen)
    assert again.target is not None

    def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
        return {tuple(t.flatten().tolist()) for t in x}

    assert rows(again.target) <= rows(batch.target)
    clean = GlobalEditBucket(GlobalEditParams()).sample(8, torch.Generator().manual_seed(1))
    noisy_bucket = GlobalEditBucket(GlobalEditParams(targets=TargetParams(noise=0.5)))
    noisy = noisy_bucket.sample(8, torch.Generator().manual_seed(1))
    assert clean.target is not None and noisy.target is not None
    assert torch.equal(clean.cond["prompt"], noisy.cond["prompt"])
    assert 0.3 < float((noisy.target - clean.target).std()) < 0.7
    assert limited.evaluation().params.targets is None

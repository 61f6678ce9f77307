"""Cond: a batch-aligned mapping of named tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldkit.cond import Cond


def make(batch: int = 4, seed: int = 0) -> Cond:
    gen = torch.Generator().manual_seed(seed)
    return Cond(
        text=torch.randn(batch, 3, 5, generator=gen),
        pooled=torch.randn(batch, 5, generator=gen),
        label=torch.arange(batch) + 10,
        keep=torch.arange(batch) % 2 == 0,
        source=torch.randn(batch, 1, 2, 2, generator=gen),
        nulls={"text": torch.zeros(1, 3, 5), "pooled": torch.full((1, 5), -1.0), "label": torch.tensor([-1])},
    )


def assert_same(a: Cond, b: Cond) -> None:
    assert list(a.keys()) == list(b.keys())
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# --- construction -----------------------------------------------------------------------------------


def test_mapping_basics_and_batch_size():
    c = make(3)
    assert set(c) == {"text", "pooled", "label", "keep", "source"}
    assert len(c) == 5
    assert c.batch_size == 3
    assert "label" in c and "mask" not in c
    assert Cond().batch_size is None
    assert "batch=3" in repr(c)


def test_data_and_keywords_merge():
    c = Cond({"a": torch.zeros(2, 1)}, b=torch.ones(2))
    assert set(c) == {"a", "b"} and c.batch_size == 2


def test_batch_size_mismatch_raises():
    with pytest.raises(ValueError, match="batch size"):
        Cond(a=torch.zeros(3, 2), b=torch.zeros(4, 2))


def test_scalar_and_non_tensor_rejected():
    with pytest.raises(ValueError, match="batch dimension"):
        Cond(a=torch.tensor(1.0))
    with pytest.raises(TypeError):
        Cond(a=[1, 2, 3])


def test_null_for_missing_key_rejected():
    with pytest.raises(KeyError):
        Cond(a=torch.zeros(2), nulls={"b": torch.zeros(1)})


def test_is_immutable_view_of_nulls():
    c = make()
    nulls = c.nulls
    nulls["source"] = torch.zeros(1, 1, 2, 2)
    assert "source" not in c.nulls


# --- indexing -----------------------------------------------------------------------------------


def test_index_slice():
    c = make(5)
    sub = c.index(slice(1, 4))
    assert sub.batch_size == 3
    for k in c:
        assert torch.equal(sub[k], c[k][1:4])
    assert set(sub.nulls) == set(c.nulls)


def test_index_tensor_and_list_reorders_rows():
    c = make(5)
    idx = torch.tensor([4, 0, 0, 2])
    sub = c.index(idx)
    assert sub.batch_size == 4
    for k in c:
        assert torch.equal(sub[k], c[k][idx])
    assert_same(c.index([4, 0, 0, 2]), sub)


def test_index_bool_mask():
    c = make(4)
    mask = torch.tensor([True, False, False, True])
    sub = c.index(mask)
    assert sub.batch_size == 2
    assert torch.equal(sub["label"], torch.tensor([10, 13]))


@pytest.mark.parametrize("i", [0, 2, -1, torch.tensor(2)])
def test_integer_index_keeps_batch_dim(i):
    c = make(3)
    row = c.index(i)
    assert row.batch_size == 1
    j = int(i)
    for k in c:
        assert torch.equal(row[k], c[k][j : j + 1 if j != -1 else None]), k


def test_integer_index_on_matrix_only_cond_keeps_batch_dim():
    # Regression: ``v[i]`` on a [B, D] tensor silently turned the feature dim into the batch dim.
    c = Cond(text=torch.randn(3, 4))
    row = c.index(1)
    assert row.batch_size == 1 and row["text"].shape == (1, 4)


# --- cat / repeat ---------------------------------------------------------------------------------


def test_cat_concatenates_in_order_and_keeps_first_nulls():
    a, b = make(2, seed=1), make(3, seed=2)
    c = Cond.cat([a, b])
    assert c.batch_size == 5
    for k in a:
        assert torch.equal(c[k], torch.cat([a[k], b[k]]))
    assert set(c.nulls) == set(a.nulls)
    assert_same(c.index(slice(0, 2)), a)
    assert_same(c.index(slice(2, 5)), b)


def test_cat_key_order_independent():
    a = Cond(x=torch.zeros(1, 2), y=torch.zeros(1))
    b = Cond(y=torch.ones(2), x=torch.ones(2, 2))
    c = Cond.cat([a, b])
    assert torch.equal(c["y"], torch.tensor([0.0, 1.0, 1.0]))


def test_cat_mismatched_keys_raises():
    with pytest.raises(ValueError, match="same keys"):
        Cond.cat([make(2), make(2).without("source")])
    with pytest.raises(ValueError):
        Cond.cat([])


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), n=st.integers(1, 4))
def test_repeat_vs_repeat_interleave_order(batch, n):
    c = make(batch)
    rep, inter = c.repeat(n), c.repeat_interleave(n)
    assert rep.batch_size == inter.batch_size == batch * n
    # repeat: the whole batch n times, like torch.cat([c] * n)
    assert_same(rep, Cond.cat([c] * n))
    # repeat_interleave: each row n times in place
    for row in range(batch * n):
        assert_same(rep.index(slice(row, row + 1)), c.index(slice(row % batch, row % batch + 1)))
        assert_same(inter.index(slice(row, row + 1)), c.index(slice(row // n, row // n + 1)))
    assert set(rep.nulls) == set(inter.nulls) == set(c.nulls)


# --- dtype / device ---------------------------------------------------------------------------------


def test_to_dtype_casts_floats_only():
    c = make()
    d = c.to(dtype=torch.float64)
    assert d["text"].dtype == d["pooled"].dtype == d["source"].dtype == torch.float64
    assert d["label"].dtype == torch.int64
    assert d["keep"].dtype == torch.bool
    assert torch.equal(d["label"], c["label"]) and torch.equal(d["keep"], c["keep"])
    assert torch.allclose(d["text"], c["text"].double())
    # nulls are cast the same way
    assert d.nulls["text"].dtype == torch.float64
    assert d.nulls["label"].dtype == torch.int64
    h = c.to("cpu", torch.float16)
    assert h["pooled"].dtype == torch.float16 and h["label"].dtype == torch.int64
    assert c.to("cpu")["text"].dtype == torch.float32


# --- uncond / replace / without --------------------------------------------------------------------


def test_uncond_replaces_null_keys_broadcast_and_keeps_others():
    c = make(4)
    u = c.uncond()
    assert u.batch_size == 4
    assert torch.equal(u["text"], torch.zeros(4, 3, 5))
    assert torch.equal(u["pooled"], torch.full((4, 5), -1.0))
    assert torch.equal(u["label"], torch.full((4,), -1))
    assert u["label"].dtype == c["label"].dtype
    # keys without a null value stay as they were (guidance over an edit keeps the source)
    assert torch.equal(u["source"], c["source"])
    assert torch.equal(u["keep"], c["keep"])
    # uncond keeps the nulls and is idempotent
    assert set(u.nulls) == set(c.nulls)
    assert_same(u.uncond(), u)
    # the original is untouched
    assert torch.equal(c["label"], torch.arange(4) + 10)


def test_uncond_null_without_batch_dim_broadcasts():
    c = Cond(text=torch.randn(3, 4), nulls={"text": torch.arange(4.0)})
    assert torch.equal(c.uncond()["text"], torch.arange(4.0).expand(3, 4))


def test_uncond_result_is_writable_copy():
    c = make(2)
    u = c.uncond()
    u["text"][0] += 1  # expand_as without clone would alias one row across the batch
    assert torch.equal(u["text"][1], torch.zeros(3, 5))


def test_uncond_without_nulls_is_identity():
    c = Cond(a=torch.randn(2, 3))
    assert_same(c.uncond(), c)


def test_replace_adds_and_replaces_and_keeps_nulls():
    c = make(2)
    new_text = torch.ones(2, 3, 5)
    r = c.replace(text=new_text, mask=torch.ones(2, 1, 2, 2))
    assert torch.equal(r["text"], new_text) and "mask" in r
    assert set(r.nulls) == set(c.nulls)
    assert torch.equal(r.uncond()["text"], torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="batch size"):
        c.replace(mask=torch.ones(3, 1))


def test_without_drops_keys_and_their_nulls():
    c = make(2)
    w = c.without("text", "source", "not_there")
    assert set(w) == {"pooled", "label", "keep"}
    assert set(w.nulls) == {"pooled", "label"}
    # the result is a consistent Cond: uncond still works
    assert torch.equal(w.uncond()["label"], torch.full((2,), -1))
    # and putting a key back does not resurrect its old null
    back = w.replace(text=c["text"])
    assert "text" not in back.nulls
    assert torch.equal(back.uncond()["text"], c["text"])


def test_index_repeat_cat_keep_nulls_usable():
    c = make(3)
    for d in (
        c.index(slice(0, 1)),
        c.repeat(2),
        c.repeat_interleave(2),
        Cond.cat([c, c]),
        c.to(torch.float64),
    ):
        u = d.uncond()
        assert torch.equal(u["label"], torch.full((d.batch_size,), -1))
        assert torch.equal(u["source"], d["source"])


def test_to_accepts_dtype_positionally_like_tensor_to():
    c = make()
    d = c.to(torch.float64)
    assert d["text"].dtype == torch.float64 and d["label"].dtype == torch.int64

"""fieldkit.attention: every runnable backend agrees with the naive softmax, and the choice is explicit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import profile

from fieldkit.attention import (
    ENV_VAR,
    AttentionUnavailable,
    Backend,
    attention,
    available_backends,
    current_backend,
    set_default_backend,
    use_backend,
)
from fieldkit.errors import FieldkitError

CPU_BACKENDS = available_backends("cpu", torch.float32, masked=True)
FAST = [b for b in CPU_BACKENDS if b != "naive"]


@pytest.fixture(autouse=True)
def _clean_choice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_default_backend(None)
    yield
    set_default_backend(None)


def _qkv(b: int, h: int, lq: int, lk: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, h, lq, d), (b, h, lk, d), (b, h, lk, d)]
    return tuple(torch.randn(s, generator=gen, requires_grad=True) for s in shapes)


def _mask(kind: str, b: int, h: int, lq: int, lk: int) -> torch.Tensor | None:
    gen = torch.Generator().manual_seed(1)
    if kind == "none":
        return None
    if kind == "key-padding":  # [B, 1, 1, Lk]: each sample keeps its first `length` keys
        lengths = torch.randint(1, lk + 1, (b,), generator=gen)
        lengths[0] = max(1, lk - 3)  # at least one sample really pads
        return (torch.arange(lk) < lengths[:, None])[:, None, None, :]
    if kind == "full":  # [B, H, Lq, Lk] random, one kept key per query row
        mask = torch.rand(b, h, lq, lk, generator=gen) > 0.5
        mask[..., 0] = True
        return mask
    if kind == "2d":  # [Lq, Lk], broadcast over batch and heads
        mask = torch.rand(lq, lk, generator=gen) > 0.3
        mask[:, -1] = True
        return mask
    raise ValueError(kind)


def _forward_backward(name: str, q, k, v, mask) -> tuple[torch.Tensor, ...]:
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q, k, v, mask, backend=name)
    # A fixed random cotangent, so every output element and its gradient path is checked.
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * cot).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


SHAPES = [  # (B, H, Lq, Lk, D)
    (2, 1, 13, 13, 32),
    (3, 4, 16, 16, 64),
    (1, 4, 37, 21, 64),  # cross-attention, L not a multiple of 8
    (2, 4, 1, 9, 32),
]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", ["none", "key-padding", "full", "2d"])
def test_backend_matches_naive_forward_and_backward(
    name: str, shape: tuple[int, ...], mask_kind: str
) -> None:
    b, h, lq, lk, d = shape
    q, k, v = _qkv(b, h, lq, lk, d)
    mask = _mask(mask_kind, b, h, lq, lk)
    got = _forward_backward(name, q, k, v, mask)
    want = _forward_backward("naive", q, k, v, mask)
    for g, w, what in zip(got, want, ["out", "dq", "dk", "dv"], strict=True):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4, msg=lambda m, what=what: f"{name} {what}: {m}")


def test_naive_is_the_softmax_formula_and_masks_drop_keys() -> None:
    q, k, v = (t.detach().double() for t in _qkv(2, 3, 5, 7, 8))
    mask = _mask("key-padding", 2, 3, 5, 7)
    out = attention(q, k, v, mask, backend="naive")
    for i in range(2):
        keep = mask[i, 0, 0]
        weights = torch.softmax(q[i] @ k[i][:, keep].mT / 8**0.5, dim=-1)
        torch.testing.assert_close(out[i], weights @ v[i][:, keep])


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_fully_masked_query_rows_give_zeros(name: str) -> None:
    q, k, v = _qkv(1, 2, 4, 6, 32)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[0, 0, 2] = False
    out = attention(q, k, v, mask, backend=name)
    assert torch.equal(out[0, :, 2], torch.zeros(2, 32))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAST)
def test_low_precision_backends_match_naive(name: str) -> None:
    q, k, v = (t.detach().bfloat16() for t in _qkv(2, 4, 19, 19, 64))
    mask = _mask("key-padding", 2, 4, 19, 19)
    got = attention(q, k, v, mask, backend=name).float()
    want = attention(q.float(), k.float(), v.float(), mask, backend="naive")
    torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.sampled_from([1, 2, 4]),
    lq=st.integers(1, 40),
    lk=st.integers(1, 40),
    d=st.sampled_from([8, 32, 64]),
    masked=st.booleans(),
)
def test_sdpa_matches_naive_over_shapes(b: int, h: int, lq: int, lk: int, d: int, masked: bool) -> None:
    q, k, v = _qkv(b, h, lq, lk, d, seed=lq * 41 + lk)
    mask = _mask("key-padding", b, h, lq, lk) if masked else None
    for g, w in zip(
        _forward_backward("sdpa", q, k, v, mask), _forward_backward("naive", q, k, v, mask), strict=True
    ):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=1e-4)


def _ops(fn: Callable[[], object]) -> set[str]:
    """The names of the aten ops that ``fn`` runs."""
    with profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _aten_ops(name: str) -> set[str]:
    q, k, v = _qkv(1, 2, 9, 9, 16)
    return _ops(lambda: attention(q, k, v, backend=name).sum().backward())


def test_pinned_sdpa_backends_run_the_kernel_they_name() -> None:
    math_ops = _aten_ops("sdpa-math")
    assert "aten::_scaled_dot_product_attention_math" in math_ops
    assert not any("flash" in op for op in math_ops)
    if "sdpa-flash" in CPU_BACKENDS:
        flash_ops = _aten_ops("sdpa-flash")
        assert "aten::_scaled_dot_product_flash_attention_for_cpu" in flash_ops
        assert "aten::_scaled_dot_product_attention_math" not in flash_ops


def test_cpu_availability_is_what_pytorch_provides() -> None:
    assert {"sdpa", "sdpa-math", "naive"} <= set(CPU_BACKENDS)
    for cuda_only in ("xformers", "sdpa-cudnn", "sdpa-efficient"):
        assert cuda_only not in available_backends("cpu", torch.float32)
        assert cuda_only not in available_backends("cpu", torch.float32, masked=True)


def test_declared_rules_explain_each_refusal() -> None:
    def kernel(q, k, v, mask):
        return q

    cpu, f32 = torch.device("cpu"), torch.float32
    assert Backend("any", kernel).refusal(cpu, f32, 3, masked=True) is None
    assert "does not support an attention mask" in Backend("m", kernel, supports_mask=False).refusal(
        cpu, f32, 4, True
    )
    assert Backend("m", kernel, supports_mask=False).refusal(cpu, f32, 4, False) is None
    assert "needs 4-D" in Backend("r", kernel, needs_4d=True).refusal(cpu, f32, 3, False)
    half = Backend("h", kernel, dtypes=frozenset({torch.float16, torch.bfloat16}))
    assert half.refusal(cpu, f32, 4, False) == "it supports bfloat16, float16, got float32"
    missing = Backend("p", kernel, requires="fieldkit_no_such_package")
    assert "'fieldkit_no_such_package' package is not installed" in missing.refusal(cpu, f32, 4, False)


@pytest.mark.parametrize("name", ["xformers", "sdpa-cudnn", "sdpa-efficient"])
def test_unavailable_backend_raises_with_reason_and_choices(name: str) -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8)
    with pytest.raises(AttentionUnavailable) as info:
        attention(q, k, v, backend=name)
    message = str(info.value)
    assert repr(name) in message and "cuda" in message
    assert "available on cpu/float32: " + ", ".join(available_backends("cpu", torch.float32)) in message


def test_unknown_backend_raises_with_known_and_available_lists() -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8)
    with pytest.raises(AttentionUnavailable, match=r"unknown attention backend 'flash3'") as info:
        attention(q, k, v, backend="flash3")
    assert "known: sdpa, sdpa-flash" in str(info.value)
    assert "available on cpu/float32: sdpa" in str(info.value)
    with pytest.raises(AttentionUnavailable, match="known: "), use_backend("flash3"):
        pass
    with pytest.raises(AttentionUnavailable, match="flash3"):
        set_default_backend("flash3")


def test_non_bool_mask_is_rejected() -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8)
    with pytest.raises(FieldkitError, match="bool"):
        attention(q, k, v, torch.ones(4, 4))


def test_env_var_selects_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8)
    assert current_backend() == "sdpa"
    monkeypatch.setenv(ENV_VAR, "naive")
    assert current_backend() == "naive"
    assert "aten::scaled_dot_product_attention" not in _ops(lambda: attention(q, k, v))
    monkeypatch.setenv(ENV_VAR, "sdpa-cudnn")
    with pytest.raises(AttentionUnavailable, match=f"'sdpa-cudnn' \\(from {ENV_VAR}\\)"):
        attention(q, k, v)
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(AttentionUnavailable, match=f"unknown attention backend 'nope' \\(from {ENV_VAR}\\)"):
        attention(q, k, v)


def test_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = _qkv(1, 1, 4, 4, 8)
    monkeypatch.setenv(ENV_VAR, "xformers")  # would fail on CPU if it were used
    set_default_backend("sdpa-math")
    assert current_backend() == "sdpa-math"
    assert "aten::_scaled_dot_product_attention_math" in _ops(lambda: attention(q, k, v))
    with use_backend("naive"):
        assert current_backend() == "naive"
        assert "aten::scaled_dot_product_attention" not in _ops(lambda: attention(q, k, v))
        ops = _ops(lambda: attention(q, k, v, backend="sdpa-math"))
        assert "aten::_scaled_dot_product_attention_math" in ops  # the argument beats the context
    set_default_backend(None)
    with pytest.raises(AttentionUnavailable, match=f"from {ENV_VAR}"):
        attention(q, k, v)


def test_context_managers_nest_and_restore() -> None:
    set_default_backend("sdpa-math")
    with use_backend("naive"):
        with use_backend("sdpa"):
            assert current_backend() == "sdpa"
        assert current_backend() == "naive"
        with pytest.raises(RuntimeError), use_backend("sdpa-flash"):
            raise RuntimeError("inside")
        assert current_backend() == "naive"
    assert current_backend() == "sdpa-math"

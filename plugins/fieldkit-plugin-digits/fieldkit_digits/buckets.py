"""The data buckets of the digits world: T2I prompts, local edits and global edits.

Every bucket yields ``Batch(cond, target)`` (edits also ``source``, the canvases they start from) with flow
states shaped ``(1, 8, 16)`` and the same Cond keys:

- ``text`` [B, 16, 384], ``text_mask`` [B, 16], ``pooled`` [B, 384]: the MiniLM embedding of the prompt or
  instruction (null values: the empty prompt, so ``cond.uncond()`` is classifier-free guidance's condition);
- ``source`` [B, 1, 8, 16]: the clean source canvas of an edit; all zeros for T2I. Zero is mid-grey, which no
  real canvas is (their background is -1), so one network tells "no source" from any source;
- ``mask`` [B, 1, 8, 16]: 1 where the canvas may change (the edited side of a local edit, everywhere else);
- ``prompt`` [B]: the prompt's row in the text bank (``bank.texts[row]`` is its text; 0 is the empty prompt);
- ``digits`` [B, 2]: what each side of the target should read as (0-9, ``BLANK``), for the metrics;
- ``op`` [B] (the edit: index into ``LOCAL_OPS`` / ``GLOBAL_OPS``, -1 for T2I), ``side`` [B] (the edited side,
  -1 when none), and, for local edits, ``target_text``/``target_text_mask``/``target_pooled``: a T2I prompt
  that describes the edited canvas (what the training-free operator teacher reads), and ``target_prompt``
  its row in the text bank.

``split: train`` draws train digits, ``split: heldout`` held-out digits (sources of edits, real canvases).
``phrasing`` picks the prompt phrasings: ``train`` (eight per kind, what teachers and students learn), or
``heldout`` (two per kind that nothing trains on). :meth:`evaluation` returns what metrics and sample grids
read: held-out digits (``eval_split``: all of them, or their ``validation`` or ``test`` half), no prompt
dropout and the ``eval_phrasing`` phrasings (by default the held-out ones; ``eval_phrasing: train`` probes
the train phrasings instead).
``drop`` replaces the prompt by the empty one with that probability (teacher training, for CFG).
``targets`` (default: off) restricts what the bucket's *targets* hold, for data-limited baselines:
``limit: N`` draws every batch from one fixed set of N (condition, target) pairs, ``noise: s`` adds Gaussian
pixel noise of standard deviation s to the targets (fixed per pair when limited). Conditions-only methods
(DanceOPD) read the same bucket without it; :meth:`evaluation` always drops it.

``ops`` and ``sides`` (default: all) filter an edit bucket to one capability's edits, in training and in its
evaluation twin alike: a filtered bucket draws the bucket's own distribution conditioned on the listed ops
(and sides), ``P(op | op in ops) = w_op / sum_{o in ops} w_o`` with the local weights ``LOCAL_WEIGHTS`` and
uniform global ops and sides. Listing every op (or side) draws exactly what the unfiltered bucket draws,
batch for batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fieldkit.plugin_api import Batch, Cond
from fieldkit_digits.params import BucketParams, GlobalEditParams, LocalEditParams
from fieldkit_digits.prompts import Prompt, phrasings, render, text_bank
from fieldkit_digits.world import (
    BLANK,
    GLOBAL_OPS,
    LOCAL_OPS,
    SHAPE,
    SIDES,
    DigitPool,
    compose,
    global_edits,
    side_mask,
)

#: How often a local edit is each of ``LOCAL_OPS`` (replace, remove, add).
LOCAL_WEIGHTS = (0.5, 0.25, 0.25)


def indices(names: Sequence[str] | None, known: tuple[str, ...]) -> Tensor:
    """The rows of ``known`` that ``names`` lists, in ``known``'s order (``None``: every row)."""
    return torch.tensor([k for k, name in enumerate(known) if names is None or name in names])


def weighted(kept: Tensor, weights: Tensor, u: Tensor) -> Tensor:
    """``kept[i]`` with probability ``weights[i] / sum(weights)`` for ``u ~ U[0, 1)``: the first ``i`` whose
    cumulative share exceeds ``u``."""
    shares = weights.double().cumsum(0) / weights.double().sum()
    return kept[torch.searchsorted(shares[:-1].float(), u, right=True)]


class DigitsBucket:
    """Common machinery: the digit pool, the text bank and the Cond layout."""

    shape = SHAPE
    kind = "base"

    def __init__(self, params: BucketParams) -> None:
        self.params = params
        self.pool = DigitPool(params.split, params.seed)
        self.bank = text_bank(params.cache_dir)
        self._pairs: Batch | None = None

    def evaluation(self) -> DigitsBucket:
        """The bucket metrics and sample grids read: the ``eval_split`` held-out digits, the
        ``eval_phrasing`` phrasings (held-out by default), no prompt dropout."""
        update = {
            "split": self.params.eval_split,
            "phrasing": self.params.eval_phrasing,
            "drop": 0.0,
            "targets": None,
        }
        return type(self)(self.params.model_copy(update=update))

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn with ``generator``; ``targets`` (when set) limits and/or noises the targets."""
        spec = self.params.targets
        if spec is None:
            return self._sample(batch_size, generator)
        if spec.limit is None:
            batch = self._sample(batch_size, generator)
            assert batch.target is not None
            noise = torch.randn(batch.target.shape, generator=generator)
            return Batch(batch.cond, batch.target + spec.noise * noise, batch.source)
        if self._pairs is None:  # the fixed pairs, drawn once from their own seed
            fixed = torch.Generator().manual_seed(spec.seed)
            pairs = self._sample(spec.limit, fixed)
            assert pairs.target is not None
            noise = torch.randn(pairs.target.shape, generator=fixed)
            self._pairs = Batch(pairs.cond, pairs.target + spec.noise * noise, pairs.source)
        rows = torch.randint(spec.limit, (batch_size,), generator=generator)
        return self._pairs.rows(rows)

    def _sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def captions(self, batch: Batch) -> list[str]:
        """Each sample's prompt or edit instruction as text (sample grids show them)."""
        return [self.bank.texts[int(row)] or "(no prompt)" for row in batch.cond["prompt"]]

    def _text_rows(self, prompts: list[Prompt], generator: torch.Generator, drop: float) -> Tensor:
        templates = [phrasings(p.kind, self.params.phrasing) for p in prompts]
        pick = torch.rand(len(prompts), generator=generator)
        dropped = torch.rand(len(prompts), generator=generator) < drop
        rows = [
            0 if dropped[i] else self.bank.index(render(t[int(pick[i] * len(t))], p))
            for i, (p, t) in enumerate(zip(prompts, templates, strict=True))
        ]
        return torch.tensor(rows)

    def _cond(self, rows: Tensor, **extra: Tensor) -> Cond:
        nulls = self.bank.nulls()
        return Cond({**self.bank.rows(rows), "prompt": rows, **extra}, nulls=nulls)


class T2IBucket(DigitsBucket):
    """Prompts such as "a 3 on the left and a 7 on the right" or "a single 5 on the right", with a real
    canvas that answers each one as target."""

    kind = "t2i"

    def _sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        single = torch.rand(batch_size, generator=generator) < self.params.single  # type: ignore[attr-defined]
        digits = torch.randint(10, (batch_size, 2), generator=generator)
        sides = torch.randint(2, (batch_size,), generator=generator)
        prompts = []
        for i in range(batch_size):
            if single[i]:
                s = int(sides[i])
                digits[i, 1 - s] = BLANK
                prompts.append(Prompt("single", d=int(digits[i, s]), side=s))
            else:
                prompts.append(Prompt("pair", a=int(digits[i, 0]), b=int(digits[i, 1])))
        rows = self._text_rows(prompts, generator, self.params.drop)
        target = compose(self.pool.draw(digits[:, 0], generator), self.pool.draw(digits[:, 1], generator))
        cond = self._cond(
            rows,
            source=torch.zeros(batch_size, *SHAPE),
            mask=torch.ones(batch_size, *SHAPE),
            digits=digits,
            op=torch.full((batch_size,), -1),
            side=torch.full((batch_size,), -1),
        )
        return Batch(cond, target)


class LocalEditBucket(DigitsBucket):
    """Replace, remove or add the digit on one side; the other side of the target is the source's, pixel for
    pixel. Replace: half the edits; remove and add: a quarter each (``ops``, ``sides``: only those)."""

    kind = "local"

    def __init__(self, params: LocalEditParams) -> None:
        super().__init__(params)
        self.ops = indices(params.ops, LOCAL_OPS)
        self.weights = torch.tensor(LOCAL_WEIGHTS)[self.ops]
        self.sides = indices(params.sides, SIDES)

    def _sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        ops = weighted(self.ops, self.weights, torch.rand(batch_size, generator=generator))
        sides = self.sides[torch.randint(len(self.sides), (batch_size,), generator=generator)]
        a = torch.randint(10, (batch_size,), generator=generator)
        b = (a + torch.randint(1, 10, (batch_size,), generator=generator)) % 10  # b != a
        other = torch.randint(10, (batch_size,), generator=generator)
        other_blank = torch.rand(batch_size, generator=generator) < 0.25
        other = torch.where((ops == 0) & other_blank, BLANK, other)  # replace may have an empty other side
        before = torch.where(ops == 2, BLANK, a)
        after = torch.where(ops == 1, BLANK, b)
        keep = self.pool.draw(other, generator)
        src_side = self.pool.draw(before, generator)
        new_side = self.pool.draw(after, generator)
        right = sides.bool()[:, None, None]
        source = compose(torch.where(right, keep, src_side), torch.where(right, src_side, keep))
        target = compose(torch.where(right, keep, new_side), torch.where(right, new_side, keep))
        digits = torch.stack(
            [torch.where(sides == 1, other, after), torch.where(sides == 1, after, other)], 1
        )
        prompts, described = [], []
        for i in range(batch_size):
            s, op = int(sides[i]), LOCAL_OPS[int(ops[i])]
            prompts.append(
                Prompt(
                    op, a=int(a[i]) if op != "add" else None, b=int(b[i]) if op != "remove" else None, side=s
                )
            )
            left, rightd = int(digits[i, 0]), int(digits[i, 1])
            if BLANK in (left, rightd):
                filled = 0 if rightd == BLANK else 1
                described.append(Prompt("single", d=int(digits[i, filled]), side=filled))
            else:
                described.append(Prompt("pair", a=left, b=rightd))
        rows = self._text_rows(prompts, generator, self.params.drop)
        target_rows = torch.tensor(
            [self.bank.index(render(phrasings(p.kind, "train")[0], p)) for p in described]
        )
        described_text = self.bank.rows(target_rows)
        cond = self._cond(
            rows,
            source=source,
            mask=side_mask(sides),
            digits=digits,
            op=ops,
            side=sides,
            target_prompt=target_rows,
            target_text=described_text["text"],
            target_text_mask=described_text["text_mask"],
            target_pooled=described_text["pooled"],
        )
        return Batch(cond, target, source)


class GlobalEditBucket(DigitsBucket):
    """Invert, embolden, mirror or flip the whole canvas (uniformly; ``ops``: only those); the target is the
    exact transform."""

    kind = "global"

    def __init__(self, params: GlobalEditParams) -> None:
        super().__init__(params)
        self.ops = indices(params.ops, GLOBAL_OPS)

    def _sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        ops = self.ops[torch.randint(len(self.ops), (batch_size,), generator=generator)]
        digits = torch.randint(10, (batch_size, 2), generator=generator)
        single = torch.rand(batch_size, generator=generator) < 0.25
        empty = torch.randint(2, (batch_size,), generator=generator)
        digits[single, empty[single]] = BLANK
        source = compose(self.pool.draw(digits[:, 0], generator), self.pool.draw(digits[:, 1], generator))
        target = global_edits(source, ops)
        rows = self._text_rows([Prompt(GLOBAL_OPS[int(o)]) for o in ops], generator, self.params.drop)
        cond = self._cond(
            rows,
            source=source,
            mask=torch.ones(batch_size, *SHAPE),
            digits=digits,
            op=ops,
            side=torch.full((batch_size,), -1),
        )
        return Batch(cond, target, source)

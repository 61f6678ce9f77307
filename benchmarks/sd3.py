"""The SD3 student: engine overhead, fieldkit's attention processor against diffusers' stock one, and a
DanceOPD step against a reconstruction of the authors' trainer, on a tiny SD3 pipeline built from configs.

The pipeline (written to a temporary folder, nothing fetched): an SD3 transformer of 2 joint blocks x 64
wide (2 heads x 32) on 16 x 32 x 32 latents (patch 2: 256 image tokens), the plugin's three tiny text encoders
(two CLIPs and a T5; 77 + ``--t5-tokens`` text tokens, SD3's default 256), fp32, batch 1, a 16-step rollout
on the shift-3 schedule, K = 1 query ~ Beta(5, 2), LoRA rank 4 on SD3's eight attention projections.

1. Engine overhead: fieldkit's DanceOPD step over the bare passes it makes (as ``engine_overhead.py``).
2. Attention: the student transformer with ``FieldkitJointAttnProcessor`` against diffusers'
   ``JointAttnProcessor2_0``, forward and forward + backward, on the tiny transformer and a wider one.
3. Against the authors' trainer. Their code cannot run here, so the baseline is a RECONSTRUCTION of its
   costs as they were measured (about 0.115 s per step at 2 threads, 1.15-1.17x its bare passes, ~70% of
   the step in the rollout) and as their loop is described (shared/method/danceopd-paper-digest.md, 3.1:
   "Each DanceOPD step costs N no-grad student NFEs"): each step re-encodes its prompt with the three text
   encoders, rolls out all 16 steps through the un-merged peft LoRA wrappers and keeps the queried state,
   queries the teacher, and trains with gradient checkpointing always on. Same math as fieldkit's step (the
   queried state, rollout length, query distribution, velocity MSE, clipping, AdamW), timed interleaved
   with it; the reconstruction's own cost structure is printed beside, to compare with the quoted figures,
   and so are fieldkit's step without the merged-adapter rollout and without the SD3 field's cheap
   dtype lookup (what they gained)::

    python benchmarks/sd3.py [--quick] [--threads 2] [--t5-tokens 256] [--steps 40] [--parts 1,2,3]
    python benchmarks/sd3.py --device cuda --bf16     # the same on a GPU (run by benchmarks/gpu.sh)
"""

from __future__ import annotations

import contextlib
import copy
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    PassLog,
    autocast,
    clock,
    engine_autocast,
    interleaved,
    median_ms,
    paired_ratio,
    parser,
    replay,
    setup,
    sync,
)
from rich.console import Console
from rich.table import Table

from fieldkit import loads_graph
from fieldkit.distill.engine import Engine
from fieldkit.distill.queries import sample_indices
from fieldkit.flow import sigma_schedule
from fieldkit.models.lora import merged_lora
from fieldkit.plugins import get_host

TINY_SD3 = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 32,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # the tiny T5's width (the CLIP states are padded to it, as in SD3)
    "caption_projection_dim": 64,
    "pooled_projection_dim": 64,  # two tiny CLIP projections of 32
    "pos_embed_max_size": 16,
}
WIDE_SD3 = {**TINY_SD3, "num_layers": 4, "attention_head_dim": 64, "num_attention_heads": 4}
WIDE_SD3["caption_projection_dim"] = 256
SHAPE = (16, 32, 32)
STEPS = 16
PROMPTS = [
    "a red fox in fresh snow",
    "a lighthouse on a cliff at dusk",
    "a bowl of ramen, studio lighting",
    "two cats sleeping on a windowsill",
    "an old map of an island",
    "a glass of water on a wooden table",
    "a city street in the rain at night",
    "a field of sunflowers under a blue sky",
]


def make_pipeline(root: Path) -> Path:
    """The tiny SD3 pipeline folder: the plugin's tiny text encoders, and the item's transformer."""
    from fieldkit_sd3.field import SD3Field
    from fieldkit_sd3.tiny import make_tiny_pipeline

    folder = make_tiny_pipeline(root / "sd3", sd35=False)
    SD3Field.build_transformer(TINY_SD3, seed=0).save_pretrained(str(folder / "transformer"))
    with (root / "prompts.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt"])
        writer.writerows([p] for p in PROMPTS)
    return folder


def graph_text(root: Path, t5_tokens: int, device: str = "cpu", bf16: bool = False) -> str:
    return f"""
fields:
  teacher: {{type: sd3, path: {root / "sd3"}, dtype: float32}}
routes:
  t2i:
    field: teacher
    data: {{type: sd3.prompts, file: {root / "prompts.csv"}, pipeline: {root / "sd3"}, shape: {list(SHAPE)},
            max_sequence_length: {t5_tokens}, dtype: float32}}
student: {{init: teacher, train: lora, lora: {{rank: 4}}}}
method: {{type: danceopd, k: 1, query: low}}
flow: {{steps: {STEPS}, shift: 3.0}}
run: {{steps: 1000, batch_size: 1, lr: 1.0e-4, device: {device}, precision: {"bf16" if bf16 else "fp32"}}}
"""


def perturb_lora(model: torch.nn.Module, seed: int) -> None:
    """Non-zero LoRA B matrices, so the student differs from the teacher (the work is the same)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


# -- the reconstruction of the authors' trainer ------------------------------------------------------------


class Reconstruction:
    """A DanceOPD trainer with the authors' measured costs (a reconstruction, not their code).

    Per step: encode a prompt with the pipeline's three text encoders; roll the LoRA student (peft wrappers,
    un-merged) out under ``no_grad`` over all 16 steps, keeping the queried pre-step state; query the frozen
    teacher there; one forward + backward of the student with gradient checkpointing on; clip; AdamW.
    ``checkpointing`` / ``encode`` switch two of those costs off, to measure what each adds. ``parts``
    accumulates the seconds of each part of the step.
    """

    def __init__(
        self,
        folder: Path,
        t5_tokens: int,
        device: torch.device,
        bf16: bool = False,
        *,
        checkpointing: bool = True,
        encode: bool = True,
    ):
        from diffusers import StableDiffusion3Pipeline
        from fieldkit_sd3.field import LORA_TARGETS
        from peft import LoraConfig

        self.pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), vae=None, local_files_only=True)
        self.pipe.to(device)
        self.device = device
        self.amp = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        )
        self.teacher = self.pipe.transformer.eval().requires_grad_(False)
        self.student = copy.deepcopy(self.teacher).train()
        self.student.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(LORA_TARGETS)))
        perturb_lora(self.student, 0)
        if checkpointing:
            self.student.enable_gradient_checkpointing()
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.0)  # as fieldkit's run
        self.sigmas = sigma_schedule(STEPS, 3.0).to(device)
        self.t5_tokens, self.encode = t5_tokens, encode
        self.gen = torch.Generator().manual_seed(0)
        self.cached = self._embed(PROMPTS[0])
        self.parts: dict[str, float] = dict.fromkeys(
            ("encode", "rollout", "teacher", "grad step", "step"), 0.0
        )

    def _embed(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            text, _, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                max_sequence_length=self.t5_tokens,
            )
        return text, pooled

    @staticmethod
    def velocity(model, x, sigma, text, pooled):
        return model(
            hidden_states=x,
            timestep=sigma.expand(x.shape[0]) * 1000,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            return_dict=False,
        )[0]

    def step(self) -> None:
        t0 = time.perf_counter()
        prompt = PROMPTS[int(torch.randint(len(PROMPTS), (1,), generator=self.gen))]
        text, pooled = self._embed(prompt) if self.encode else self.cached
        t1 = time.perf_counter()
        x = torch.randn((1, *SHAPE), generator=self.gen).to(self.device)
        s = self.sigmas
        with torch.no_grad(), self.amp():
            trajectory = []
            for j in range(STEPS):
                trajectory.append(x)
                x = x + (s[j + 1] - s[j]) * self.velocity(self.student, x, s[j], text, pooled)
            i = int(sample_indices(STEPS, 1, 1, "low", self.gen)[0, 0])
            state = trajectory[i]
            t2 = time.perf_counter()
            u = self.velocity(self.teacher, state, s[i], text, pooled)
        t3 = time.perf_counter()
        with self.amp():
            pred = self.velocity(self.student, state, s[i], text, pooled)
        loss = (pred.float() - u.float()).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        t4 = time.perf_counter()
        for key, seconds in zip(self.parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            self.parts[key] += seconds


def make_engine(root: Path, t5_tokens: int, device: torch.device, bf16: bool) -> Engine:
    """fieldkit's engine on the tiny pipeline's graph; its LoRA student perturbed as the reconstruction's."""
    engine = Engine(
        loads_graph(graph_text(root, t5_tokens, device.type, bf16)), write=False, show_progress=False
    )
    perturb_lora(engine.session.student, 0)
    return engine


def sd3_plugin():
    try:
        import fieldkit_sd3
    except ImportError:  # not installed: the plugin from this checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "fieldkit-plugin-sd3"))
        import fieldkit_sd3

    host = get_host()
    if not host.pm.has_plugin("sd3"):  # not installed: registered from the checkout
        host.register(fieldkit_sd3, "sd3", fieldkit_sd3.__version__)


# -- the parts ---------------------------------------------------------------------------------------------


def engine_overhead(engine: Engine, steps: int, device: torch.device, console: Console) -> None:
    student, teacher = engine.session.student, engine.session.ctx.field("teacher")
    models = {"student": student, "teacher": teacher}
    passes = PassLog(models)
    batch = engine.session.router.routes[0].data.sample(2, torch.Generator().manual_seed(0))
    cond = batch.cond

    def inputs(n: int):
        x = torch.randn((n, *SHAPE), device=device)
        return x, torch.full((n,), 0.5, device=device), cond.index(slice(0, n)).to(device)

    engine_times, bare_times = [], []
    for i in range(steps + 3):
        seconds = clock(engine.update, device)
        bare = replay(
            models,
            passes.take(),
            inputs,
            engine_autocast(engine),
            device,
            rollout=lambda: merged_lora(student),
        )
        passes.resume()
        if i >= 3:
            engine_times.append(seconds)
            bare_times.append(bare)
    console.print(
        f"1. engine overhead (tiny SD3 student, LoRA r=4, batch 1, {steps} steps): engine "
        f"{median_ms(engine_times):.1f} ms, bare passes {median_ms(bare_times):.1f} ms; engine / bare = "
        f"{statistics.median(engine_times) / statistics.median(bare_times):.3f} (medians), "
        f"{sum(engine_times) / sum(bare_times):.3f} (totals), {paired_ratio(engine_times, bare_times):.3f} "
        "(median per-step ratio)   (target <= 1.10)"
    )


def attention_processors(rounds: int, t5_tokens: int, device: torch.device, amp, console: Console) -> None:
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from fieldkit_sd3.attention import FieldkitJointAttnProcessor
    from fieldkit_sd3.field import SD3Field

    table = Table(
        "transformer",
        "stock fwd ms",
        "fieldkit fwd ms",
        "stock f+b ms",
        "fieldkit f+b ms",
        "fwd",
        "f+b",
        "output",
    )
    for label, config in (("tiny 2 x 64", TINY_SD3), ("4 x 256", WIDE_SD3)):
        model = SD3Field.build_transformer(config, seed=0).to(device)
        width = config["joint_attention_dim"]
        inputs = {
            "hidden_states": torch.randn(1, *SHAPE, device=device),
            "timestep": torch.tensor([500.0], device=device),
            "encoder_hidden_states": torch.randn(1, 77 + t5_tokens, width, device=device),
            "pooled_projections": torch.randn(1, config["pooled_projection_dim"], device=device),
            "return_dict": False,
        }
        models = {"stock": model, "fieldkit": copy.deepcopy(model)}
        models["stock"].set_attn_processor(JointAttnProcessor2_0())
        models["fieldkit"].set_attn_processor(FieldkitJointAttnProcessor())
        steps = {}
        for name, m in models.items():

            def fwd(m=m, inputs=inputs):
                with torch.inference_mode(), amp():
                    m(**inputs)

            def both(m=m, inputs=inputs):
                with amp():
                    out = m(**inputs)[0]
                out.float().square().mean().backward()
                m.zero_grad(set_to_none=True)

            steps[f"{name} fwd"], steps[f"{name} f+b"] = fwd, both
        t = interleaved(steps, rounds, warmup=2, device=device)
        with torch.inference_mode(), amp():
            same = torch.equal(*(m(**inputs)[0] for m in models.values()))
        table.add_row(
            label,
            f"{median_ms(t['stock fwd']):.2f}",
            f"{median_ms(t['fieldkit fwd']):.2f}",
            f"{median_ms(t['stock f+b']):.2f}",
            f"{median_ms(t['fieldkit f+b']):.2f}",
            f"{paired_ratio(t['fieldkit fwd'], t['stock fwd']):.2f}",
            f"{paired_ratio(t['fieldkit f+b'], t['stock f+b']):.2f}",
            "bit for bit" if same else "differs",
        )
    console.print(f"2. SD3 attention processors (fieldkit / stock; {rounds} interleaved rounds, batch 1)")
    console.print(table)


def against_authors(root: Path, t5_tokens: int, steps: int, device, bf16: bool, console: Console) -> None:
    from fieldkit.distill import methods

    folder = root / "sd3"
    recon = Reconstruction(folder, t5_tokens, device, bf16)
    # What each of the reconstruction's costs adds, measured on the same weights (one per switch).
    no_ckpt = Reconstruction(folder, t5_tokens, device, bf16, checkpointing=False)
    no_encode = Reconstruction(folder, t5_tokens, device, bf16, encode=False)
    engine = make_engine(root, t5_tokens, device, bf16)
    unmerged = make_engine(root, t5_tokens, device, bf16)
    before = make_engine(root, t5_tokens, device, bf16)
    # diffusers' dtype walk on every call
    for field in (before.session.student, before.session.ctx.field("teacher")):
        field.compute_dtype = lambda field=field: field.transformer.dtype

    def without_merge(engine: Engine):  # fieldkit's step as it was before rollouts merged the LoRA adapters
        def step() -> None:
            saved = methods.merged_lora
            methods.merged_lora = contextlib.nullcontext
            try:
                engine.update()
            finally:
                methods.merged_lora = saved

        return step

    # The student's forward through the LoRA wrappers against the plain transformer (the teacher).
    text, pooled = recon.cached
    x, sigma = torch.randn((1, *SHAPE), device=device), torch.tensor(0.5, device=device)

    def forward(model):
        def run():
            with torch.no_grad(), recon.amp():
                Reconstruction.velocity(model, x, sigma, text, pooled)

        return run

    t = interleaved(
        {
            "reconstruction": recon.step,
            "fieldkit": engine.update,
            "fieldkit, adapters un-merged in the rollout": without_merge(unmerged),
            "fieldkit before (un-merged, and diffusers' dtype walk per call)": without_merge(before),
            "recon., no checkpointing": no_ckpt.step,
            "recon., prompt embeddings cached": no_encode.step,
            "LoRA-wrapped forward": forward(recon.student),
            "plain forward": forward(recon.teacher),
        },
        steps,
        warmup=3,
        device=device,
    )
    console.print(
        f"3. against the authors' trainer (a RECONSTRUCTION of its costs; {steps} interleaved steps, "
        f"batch 1, {torch.get_num_threads()} threads)"
    )
    table = Table("trainer", "ms / step", "reconstruction / this")
    for name in list(t)[:6]:
        table.add_row(name, f"{median_ms(t[name]):.1f}", f"{paired_ratio(t['reconstruction'], t[name]):.2f}x")
    console.print(table)
    parts = {k: v / (steps + 3) for k, v in recon.parts.items()}
    passes = parts["rollout"] + parts["teacher"] + parts["grad step"]
    lora = paired_ratio(t["LoRA-wrapped forward"], t["plain forward"]) - 1
    ckpt = paired_ratio(t["reconstruction"], t["recon., no checkpointing"]) - 1
    encode = paired_ratio(t["reconstruction"], t["recon., prompt embeddings cached"]) - 1
    console.print(
        "   the reconstruction's own costs [quoted for the authors' trainer]: step / its passes "
        f"{parts['step'] / passes:.2f} [1.15-1.17]; rollout {parts['rollout'] / parts['step']:.0%} of the "
        f"step [~70%]; a forward through the LoRA wrappers {lora:+.0%} over a plain one [+20-30%]; "
        f"checkpointing {ckpt:+.0%} [+9%]; re-encoding the prompt {encode:+.0%} [+5%]",
        markup=False,
    )
    merge = paired_ratio(t["fieldkit, adapters un-merged in the rollout"], t["fieldkit"])
    both = paired_ratio(t["fieldkit before (un-merged, and diffusers' dtype walk per call)"], t["fieldkit"])
    console.print(
        f"   reconstruction / fieldkit = {paired_ratio(t['reconstruction'], t['fieldkit']):.2f}x fewer "
        f"seconds per step (target >= 1.5); this change's gain: {both:.2f}x (the merged-adapter rollout "
        f"alone {merge:.2f}x)"
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--t5-tokens", type=int, default=256, help="T5 tokens of the prompt (SD3's default 256)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 40; 12 quick)")
    p.add_argument("--parts", default="1,2,3", help="which parts to run, e.g. 3")
    args = p.parse_args()
    device = setup(args, "tiny SD3 pipeline, batch 1")
    steps = args.steps or (12 if args.quick else 40)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.disable_progress_bar()
        log.set_verbosity_error()
    sd3_plugin()
    console = Console(width=120)
    parts = {int(x) for x in args.parts.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_pipeline(root)
        if 1 in parts:
            engine = make_engine(root, args.t5_tokens, device, args.bf16)
            engine_overhead(engine, steps, device, console)
        if 2 in parts:
            rounds = 10 if args.quick else 30
            attention_processors(rounds, args.t5_tokens, device, autocast(args, device), console)
        if 3 in parts:
            against_authors(root, args.t5_tokens, steps, device, args.bf16, console)
        console.print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()

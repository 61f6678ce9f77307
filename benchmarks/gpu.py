"""MFU: the achieved TFLOP/s of a student training step for an SD3-medium-width transformer (random weights),
bf16 autocast, eager per SDPA kernel and compiled as ``run.compile`` compiles (``fieldkit.compile``, per
block; ``--profile``: where the compiled step's time goes); and of a rollout forward (no grad).

The model is diffusers' ``SD3Transformer2DModel`` with SD3-medium's config (24 joint blocks, 24 heads x 64 =
1536 wide, 16 latent channels, patch 2, text width 4096, pooled 2048: about 2.0 B parameters), built from its
config with random weights. A training step is what DanceOPD's one gradient pass is: forward of a batch of
latents with prompt embeddings, velocity MSE, backward, fused AdamW step (fp32 master weights, full training).

FLOPs are counted, not measured: a forward costs ``2 * rows * in * out`` for every ``nn.Linear`` / patch
convolution call (rows = tokens it is applied to; counted exactly by forward hooks, one pass) plus
``4 * B * heads * L^2 * head_dim`` for each joint attention over ``L = image + text`` tokens (QK^T and
PV); a training step is 3 forwards (backward = 2x forward). For SD3-medium at 512 px, batch B:
``L = 1024 + 333``, per block ``~ 2 * 12 h^2 * L + 4 h L^2`` per sample (h = 1536). ``--check-flops``
cross-checks the count with ``torch.utils.flop_counter.FlopCounterMode`` (attention on the math kernel).
MFU = achieved / the card's dense bf16 peak (H100 / H200 SXM: 989.4 TFLOP/s) and, as a second yardstick,
/ an 8192^3 bf16 matmul measured here::

    python benchmarks/gpu.py                      # on a CUDA machine (run by benchmarks/gpu.sh)
    python benchmarks/gpu.py --dry-run            # the same logic on CPU with a tiny config, in seconds
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable

import torch
from common import parser, setup, sync
from rich.console import Console
from rich.table import Table
from sd3_memory import SD3_MEDIUM  # the SD3-medium transformer config, one copy for both scripts
from torch.nn.attention import SDPBackend, sdpa_kernel

from fieldkit.compile import compile_model

TINY = {
    **SD3_MEDIUM,
    "sample_size": 16,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 64,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 16,
}
PEAK_BF16 = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.0}
KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def card_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    """The bf16 matmul rate this card reaches here (median of 10, random data)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e12


def count_forward_flops(model: torch.nn.Module, inputs: dict, config: dict) -> tuple[float, float]:
    """(matmul FLOPs, attention FLOPs) of one forward: hooks count every Linear / Conv2d call's rows."""
    linear = 0.0

    def hook(module, args, out):
        nonlocal linear
        if isinstance(module, torch.nn.Linear):
            rows = out.numel() // out.shape[-1]
            linear += 2.0 * rows * module.in_features * module.out_features
        else:  # the patch embedding: a convolution with stride = kernel (one matmul per patch)
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            linear += 2.0 * out.numel() * k

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    try:
        with torch.inference_mode():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    b, _, height, width = inputs["hidden_states"].shape
    tokens = (height // config["patch_size"]) * (width // config["patch_size"]) + inputs[
        "encoder_hidden_states"
    ].shape[1]
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    attn = config["num_layers"] * 4.0 * b * tokens * tokens * inner
    return linear, attn


def make_inputs(config: dict, batch: int, latent: int, text_tokens: int, device: torch.device) -> dict:
    return {
        "hidden_states": torch.randn(batch, config["in_channels"], latent, latent, device=device),
        "timestep": torch.rand(batch, device=device) * 1000,
        "encoder_hidden_states": torch.randn(
            batch, text_tokens, config["joint_attention_dim"], device=device
        ),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], device=device),
        "return_dict": False,
    }


def training_step(net, inputs: dict, target: torch.Tensor, optimizer, device: torch.device) -> None:
    """One full training step: bf16-autocast forward, velocity MSE in fp32, backward, AdamW step."""
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = net(**inputs)[0]
    (out.float() - target).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def profile(step: Callable[[], None], device: torch.device, console: Console, steps: int = 3) -> None:
    """Where a step's time goes: torch.profiler over ``steps`` steps, the top 25 kernels by device time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    sync(device)
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    console.print(f"profile of {steps} training steps (sorted by {sort}):")
    console.print(
        prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60), markup=False
    )


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--dry-run", action="store_true", help="a tiny config on CPU: checks the logic quickly")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--resolution", type=int, default=512, help="pixels; latents are resolution / 8")
    p.add_argument("--text-tokens", type=int, default=333, help="77 CLIP + 256 T5 tokens, as SD3's pipeline")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-mode", default="default", help="a run.compile mode (fieldkit.compile)")
    p.add_argument("--profile", action="store_true", help="top kernels of the (compiled) training step")
    p.add_argument("--check-flops", action="store_true", help="cross-check the count with FlopCounterMode")
    args = p.parse_args()
    if args.dry_run:
        args.device, args.batch, args.resolution, args.text_tokens = "cpu", 2, 128, 8
        args.steps, args.warmup, args.check_flops, args.bf16 = 2, 1, True, True
    elif not torch.cuda.is_available():
        raise SystemExit("gpu.py needs CUDA; use --dry-run to check its logic on CPU")
    else:
        args.device = "cuda"
    args.bf16 = True
    device = setup(
        args, "SD3-medium-width student training step" + (" (dry run: tiny)" if args.dry_run else "")
    )
    from diffusers import SD3Transformer2DModel

    config = TINY if args.dry_run else SD3_MEDIUM
    latent = args.resolution // 8
    torch.manual_seed(0)
    with torch.device(device):
        model = SD3Transformer2DModel(**config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    console = Console(width=130)

    # The largest batch (from --batch, halving) whose training step fits on the card.
    batch = args.batch
    while True:
        inputs = make_inputs(config, batch, latent, args.text_tokens, device)
        target = torch.randn_like(inputs["hidden_states"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        try:
            training_step(model, inputs, target, optimizer, device)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            del inputs, target, optimizer
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            console.print(f"batch {batch} does not fit: trying {batch // 2}")
            batch //= 2

    with torch.autocast(device.type, dtype=torch.bfloat16):
        linear, attn = count_forward_flops(model, inputs, config)
    fwd_flops = linear + attn
    train_flops = 3 * fwd_flops
    image_tokens = (latent // config["patch_size"]) ** 2
    console.print(
        f"{n_params / 1e9:.3f} B parameters; batch {batch}, {args.resolution} px ({latent}x{latent} "
        f"latents, {image_tokens} image + {args.text_tokens} text tokens); "
        f"forward {fwd_flops / 1e9:.1f} GFLOP "
        f"({attn / fwd_flops:.0%} attention), training step 3x = {train_flops / 1e9:.1f} GFLOP"
    )
    if args.check_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        # The math kernel decomposes attention into matmuls, which every PyTorch build counts.
        with counter, sdpa_kernel(SDPBackend.MATH), torch.autocast(device.type, dtype=torch.bfloat16):
            model(**inputs)[0].float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        console.print(
            f"FlopCounterMode: {counter.get_total_flops() / 1e9:.2f} GFLOP for forward + backward; "
            f"the count above: {train_flops / 1e9:.2f} (ratio {counter.get_total_flops() / train_flops:.3f})"
        )

    def train_step(net) -> Callable[[], None]:
        return lambda: training_step(net, inputs, target, optimizer, device)

    def rollout_forward(net) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                net(**inputs)

        return step

    kernels = {"default": contextlib.nullcontext}
    if device.type == "cuda":
        kernels.update({name: (lambda k=k: sdpa_kernel(k)) for name, k in KERNELS.items()})
    peak, measured = card_peak(device), (matmul_tflops(device) if device.type == "cuda" else None)
    rows: list[tuple[str, str, str, float, float, int]] = []

    def measure(label: str, compiled: str, net, only: tuple[str, ...] | None = None) -> None:
        for kernel, ctx in kernels.items():
            if only is not None and kernel not in only:
                continue
            try:
                with ctx():
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t_train = time_steps(train_step(net), device, args.steps, args.warmup)
                    memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
                    t_fwd = time_steps(rollout_forward(net), device, args.steps, args.warmup)
            except Exception as err:  # a kernel that refuses these shapes, or OOM: say so and go on
                console.print(f"{label} / {kernel}: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
                continue
            rows.append((label, compiled, kernel, t_train, t_fwd, memory))

    measure("eager", "off", model)
    if not args.no_compile:
        # What run.compile does (fieldkit.compile): each joint block compiled (identical blocks reuse one
        # graph), the rest eager; the batch is fixed here, so static graphs (a batch that is a bucket size).
        start = time.perf_counter()
        compile_model(model, args.compile_mode, batch="buckets")
        train_step(model)()
        rollout_forward(model)()
        sync(device)
        console.print(
            f"run.compile: {args.compile_mode} (per block): first steps {time.perf_counter() - start:.1f} s"
        )
        # The default kernel only: a pinned kernel can make torch.compile recompile (a minute each).
        measure("compiled", args.compile_mode, model, only=("default",))
    if args.profile:  # the compiled step (the eager one with --no-compile)
        profile(train_step(model), device, console)

    table = Table(
        "model",
        "torch.compile",
        "SDPA kernel",
        "train step ms",
        "train TFLOP/s",
        "MFU (card peak)",
        "of matmul peak",
        "rollout fwd ms",
        "fwd TFLOP/s",
        "peak mem GiB",
    )
    for label, compiled, kernel, t_train, t_fwd, memory in rows:
        achieved, fwd_rate = train_flops / t_train / 1e12, fwd_flops / t_fwd / 1e12
        table.add_row(
            label,
            compiled,
            kernel,
            f"{1e3 * t_train:.1f}",
            f"{achieved:.2f}",
            f"{achieved / peak:.1%}" if peak else "-",
            f"{achieved / measured:.1%}" if measured else "-",
            f"{1e3 * t_fwd:.1f}",
            f"{fwd_rate:.2f}",
            f"{memory / 2**30:.1f}",
        )
    console.print(
        f"card bf16 dense peak {peak or '-'} TFLOP/s; 8192^3 bf16 matmul measured here: "
        f"{f'{measured:.0f}' if measured else '-'} TFLOP/s; parameters {n_params * 4 / 2**30:.1f} GiB fp32 "
        f"(+ grads and AdamW: 4x in all)"
    )
    console.print(table)


if __name__ == "__main__":
    main()

"""Trains a tiny field graph with the Engine; launched by tests/test_distill_multiprocess.py, either plainly
(one process) or with ``accelerate launch --multi_gpu --num_processes 2`` (two CPU processes, gloo).

Each process writes ``RESULTS/rank{R}.safetensors`` (its trained student) and ``RESULTS/rank{R}.json``
(what it saw: world size, history, checkpoint, and whether the frozen fields stayed out of DDP).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from toy_world import DistillWorld

from fieldkit import load_graph, loads_graph
from fieldkit.distill.engine import Engine
from fieldkit.distill.sharding import full_state
from fieldkit.plugins.manager import get_host

GRAPH = """
fields:
  ta: {type: linear, seed: 1}
  tb: {type: linear, seed: 3}
  init: {type: linear, seed: 2}
routes:
  a: {field: ta, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
  b: {field: tb, weight: 2, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], seed: 1}}
student: {init: init, ema: 0.9}
router: {type: hard, granularity: sample}
flow: {steps: 6}
run: {steps: 8, batch_size: 4, grad_accum: 2, lr: 0.02, log_every: 1, checkpoint_every: 4, device: cpu}
"""


def is_fsdp(module: object) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--graph", type=Path, help="a graph file instead of the toy graph above")
    parser.add_argument("--sd3", action="store_true", help="register the SD3 plugin")
    parser.add_argument("--resume", help="resume the run in --out (latest or a checkpoint folder)")
    args = parser.parse_args()
    host = get_host()
    host.register(DistillWorld(), "distill-world")
    if args.sd3:
        import fieldkit_sd3

        host.register(fieldkit_sd3, "sd3")
    graph = load_graph(args.graph, args.set) if args.graph else loads_graph(GRAPH, args.set)
    engine = Engine(graph, out=args.out, resume=args.resume, show_progress=False)
    result = engine.run()
    rank = engine.session.accelerator.process_index
    frozen = {}
    in_model = {id(m) for m in engine.session.model.modules()}
    for name in graph.spec.fields:
        field = engine.session.ctx.field(name)
        frozen[name] = {
            "wrapped": isinstance(field, DistributedDataParallel) or id(field) in in_model,
            "grads": any(p.requires_grad or p.grad is not None for p in getattr(field, "parameters", list)()),
        }
    args.results.mkdir(parents=True, exist_ok=True)
    # Under FSDP the student holds shards: every process gathers the whole weights (a collective).
    state = full_state(engine.session.student) if engine.session.sharded else result.student.state_dict()
    weights = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(weights, args.results / f"rank{rank}.safetensors")
    info = {
        "rank": rank,
        "world": engine.session.accelerator.num_processes,
        "model": type(engine.session.model).__name__,
        "sharded": engine.session.sharded,
        "sharded_fields": sorted(n for n in graph.spec.fields if is_fsdp(engine.session.ctx.field(n))),
        "history": [{k: r[k] for k in ("step", "route", "loss", "grad_norm")} for r in result.history],
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
        "trainable": sorted(n for n, p in result.student.named_parameters() if p.requires_grad),
        "frozen": frozen,
    }
    (args.results / f"rank{rank}.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()

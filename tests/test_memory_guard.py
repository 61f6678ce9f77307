"""The memory rule (fieldkit.memory_guard): what a config will allocate is counted on the meta device and
refused, before anything is allocated, when it is more than the device has free."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch
from test_cli_run import DISTILL

from fieldkit import loads_graph
from fieldkit.distill.memory import training_bytes
from fieldkit.errors import FieldkitError
from fieldkit.memory_guard import GIB, available_bytes, meta_bytes, tensor_bytes
from fieldkit.models import MMDiT, MMDiTConfig, load_pretrained


def test_a_model_is_counted_on_meta_with_its_buffers_as_the_real_one_holds() -> None:
    config = MMDiTConfig(sample_size=(8, 8), hidden=32, depth=2, heads=2)
    real = MMDiT(config)
    assert meta_bytes(lambda: MMDiT(config)) == tensor_bytes(real)
    grid = (8 // config.patch_size) ** 2
    # The positional table is a non-persistent buffer: in the count, not in the state dict.
    assert tensor_bytes(real) - sum(t.numel() * 4 for t in real.state_dict().values()) == grid * 32 * 4


def test_the_cpu_has_some_memory_free() -> None:
    free = available_bytes(torch.device("cpu"))
    assert free is not None and free > 0


def test_a_config_whose_buffers_do_not_fit_is_refused_before_loading(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "student"
    MMDiT(MMDiTConfig(sample_size=(4, 4), patch_size=1, hidden=16, depth=1, heads=2)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sample_size": [4096, 4096]}))
    # 4096^2 positions x 16 channels x 4 bytes = 1 GiB of positional table, and the weights file matches
    # the config (the table is not stored): a machine with 512 MiB free refuses it.
    monkeypatch.setattr("fieldkit.memory_guard.available_bytes", lambda device: GIB // 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FieldkitError, match=r"needs at least 1\.0 GiB of memory, more than the 0\.5 GiB"):
        load_pretrained(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


def test_training_memory_grows_linearly_with_the_batch() -> None:
    sizes = [training_bytes(loads_graph(DISTILL, [f"run.batch_size={b}"])) for b in (4, 8, 16)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])


def test_lora_counts_fewer_trainable_bytes_than_full_training() -> None:
    full = training_bytes(loads_graph(DISTILL))
    lora = training_bytes(loads_graph(DISTILL, ["student.train=lora", "student.lora.rank=1"]))
    assert lora < full

"""The public module plugins import (fieldkit.plugin_api) and the optional capabilities the core asks for by
name instead of probing attributes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from fieldkit import plugin_api
from fieldkit.capabilities import (
    HasCaptions,
    HasEvaluation,
    HasLoraTargets,
    HasSamplingSigmas,
    HasUncond,
    needs_route_fields,
)
from fieldkit.cond import Cond
from fieldkit.data import Batch, batch_captions, evaluation_bucket
from fieldkit.field import uncond_of
from fieldkit.flow import rollout_sigmas, sigma_schedule
from fieldkit.plugins import Params

ROOT = Path(__file__).resolve().parent.parent
#: Every plugin package in the repository: their modules import fieldkit through plugin_api only (and a
#: diffusers backbone through the backbone kit, fieldkit.backbones).
PLUGIN_PACKAGES = sorted(
    [p for p in (ROOT / "plugins").glob("*/fieldkit_*") if p.is_dir()]
    + list((ROOT / "tests" / "plugins").glob("*/fieldkit_plugin_*"))
)


def test_importing_plugin_api_imports_no_torch():
    code = "import sys, fieldkit.plugin_api; print([m for m in ('torch', 'diffusers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", plugin_api.__all__)
def test_every_public_name_resolves(name):
    assert getattr(plugin_api, name) is not None


def test_every_lazy_name_is_public_and_unknown_names_fail():
    assert {name for names in plugin_api._LAZY.values() for name in names} <= set(plugin_api.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        plugin_api.Nope  # noqa: B018


def _fieldkit_imports(path: Path) -> list[str]:
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fieldkit":
                found.append(f"{file.name}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.split(".")[0] == "fieldkit"]
                found += [f"{file.name}:{node.lineno}: import {name}" for name in names]
    public = ("from fieldkit.plugin_api import", "from fieldkit.backbones")
    return [line for line in found if not any(name in line for name in public)]


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.stem)
def test_plugins_import_fieldkit_through_plugin_api_only(package):
    internal = _fieldkit_imports(package)
    assert internal == [], (
        f"import these from fieldkit.plugin_api (add a name there if it lacks one): {internal}"
    )


# -- the capabilities ---------------------------------------------------------------------------------------


class Bucket:
    """A bucket with both optional members: captions and a held-out twin."""

    shape = (1, 2, 2)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return Batch(Cond(label=torch.arange(batch_size)))

    def captions(self, batch: Batch) -> list[int]:
        return [int(label) for label in batch.cond["label"]]

    def evaluation(self) -> Bucket:
        return held_out


held_out = Bucket()


class Plain:
    shape = (1, 2, 2)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return Batch(Cond(label=torch.zeros(batch_size)))


def test_bucket_capabilities_are_used_when_declared_and_defaults_otherwise():
    batch = Bucket().sample(3, torch.Generator())
    assert isinstance(Bucket(), HasCaptions) and isinstance(Bucket(), HasEvaluation)
    assert batch_captions(Bucket(), batch) == ["0", "1", "2"]
    assert evaluation_bucket(Bucket()) is held_out
    plain = Plain()
    assert not isinstance(plain, HasCaptions | HasEvaluation)
    assert batch_captions(plain, batch) == [] and evaluation_bucket(plain) is plain


class Scheduled:
    """A field whose own pipeline samples on ``sigma = 1 - i / (2 steps)`` then 0."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        return x

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([1 - torch.arange(steps) / (2 * steps), torch.zeros(1)])

    def uncond(self, cond: Cond) -> Cond:
        return cond.replace(label=torch.full_like(cond["label"], -1))


def test_field_capabilities_are_used_when_declared_and_defaults_otherwise():
    field = Scheduled()
    assert isinstance(field, HasSamplingSigmas) and isinstance(field, HasUncond)
    own = torch.tensor([1.0, 0.875, 0.75, 0.625, 0.0])
    assert torch.equal(rollout_sigmas("model", 4, 3.0, field, (1,)), own)
    assert torch.equal(rollout_sigmas("shift", 4, 3.0, field, (1,)), sigma_schedule(4, 3.0))
    assert torch.equal(rollout_sigmas("auto", 4, 3.0, lambda x, s, c: x, (1,)), sigma_schedule(4, 3.0))
    cond = Cond(label=torch.tensor([3, 4]), text=torch.ones(2, 1))
    assert uncond_of(field, cond)["label"].tolist() == [-1, -1]
    assert torch.equal(uncond_of(lambda x, s, c: x, cond)["text"], cond.uncond()["text"])


class LoraModel(torch.nn.Module):
    lora_targets = ("proj",)


def test_lora_targets_is_a_capability_of_the_model():
    assert isinstance(LoraModel(), HasLoraTargets)
    assert not isinstance(torch.nn.Linear(1, 1), HasLoraTargets)


class Needs(Params):
    needs_route_fields: ClassVar[bool] = True


class DoesNot(Params):
    needs_route_fields: ClassVar[bool] = False


def test_needs_route_fields_reads_the_flag_not_only_its_presence():
    assert (
        needs_route_fields(Needs()) and not needs_route_fields(DoesNot()) and not needs_route_fields(Params())
    )

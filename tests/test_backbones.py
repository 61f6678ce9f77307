"""The diffusers backbone kit: scheduler configs fieldkit's Euler sampler cannot reproduce are refused, and
the pipeline sigmas follow the scheduler (dynamic shifting included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.schedule import pipeline_sigmas, scheduler_sigmas
from fieldkit.errors import FieldkitError


def write_scheduler(folder: Path, **config: object) -> Path:
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "stochastic_sampling": True}, "stochastically"),
        ({"_class_name": "FlowMatchHeunDiscreteScheduler", "shift": 3.0}, "FlowMatchHeunDiscreteScheduler"),
    ],
)
def test_schedulers_the_euler_sampler_cannot_reproduce_are_refused(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    folder = write_scheduler(tmp_path, **config)
    with pytest.raises(FieldkitError, match=message) as err:
        scheduler_config(folder)
    assert "cannot reproduce" in str(err.value) and str(folder / "scheduler") in str(err.value)


def test_pipeline_sigmas_are_the_schedulers_own_with_mu_from_the_image_tokens(tmp_path: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True, "shift": 3.0}
    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    for tokens in (16, 1024, 4096):
        # mu on the line through (256, 0.5) and (4096, 1.15), the scheduler's defaults
        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        sched.set_timesteps(6, mu=mu)
        torch.testing.assert_close(pipeline_sigmas(config, 6, tokens), sched.sigmas, rtol=0, atol=1e-7)
    with pytest.raises(FieldkitError, match="latent shape"):
        pipeline_sigmas(config, 6)
    static = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    # the scheduler's own: t from 1 to its smallest training sigma (shifted 1/1000), shifted again
    t = torch.linspace(1, 3e-3 / (1 + 2e-3), 4, dtype=torch.float64)
    want = torch.cat([3 * t / (1 + 2 * t), torch.zeros(1, dtype=torch.float64)]).float()
    got = scheduler_sigmas(write_scheduler(tmp_path, **static), 4)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_a_pipelines_model_folder_and_a_student_folder_find_their_scheduler(tmp_path: Path) -> None:
    euler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    pipeline = write_scheduler(tmp_path / "pipe", **euler)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "transformer").mkdir()
    assert scheduler_config(pipeline / "transformer") == euler  # PIPELINE/transformer: the pipeline's
    student = tmp_path / "run" / "student"  # RUN/student keeps its own copy
    student.mkdir(parents=True)
    (student / "scheduler_config.json").write_text(json.dumps({**euler, "shift": 2.0}))
    assert scheduler_config(student) == {**euler, "shift": 2.0}
    assert scheduler_config(tmp_path / "run") is None

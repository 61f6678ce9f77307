"""LoRA in one place: adapters on a model, merged rollouts, merge-and-strip, and LoRA files.

A LoRA layer computes ``W x + (alpha / r) B A x`` (peft's ``LoraLayer``). This module

- adds trainable adapters to a student (:func:`add_lora`, ``B = 0`` at start);
- runs a rollout with the adapters merged into swapped-in weights, the base left exactly as it was
  (:func:`merged_lora`);
- merges adapters into the weights and strips the peft layers for export (:func:`merge_and_strip`);
- switches the adapters hosted by one shared diffusers transformer (:class:`AdapterSwitch`,
  :func:`load_adapter`);
- loads a LoRA over a fieldkit model as a twin sharing its weights (:func:`lora_over`);
- reads and writes LoRA files (:func:`lora_tensors`, :func:`save_lora`, :func:`read_lora`): a folder that
  ``peft.PeftModel.from_pretrained(transformer, folder)`` loads (``adapter_config.json`` +
  ``adapter_model.safetensors``, keys ``base_model.model.<module>.lora_A.weight``) and that a diffusers
  pipeline's ``load_lora_weights(folder)`` loads (``pytorch_lora_weights.safetensors``, keys
  ``transformer.<module>.lora_A.weight``): one file cannot serve both loaders.

peft, diffusers and safetensors are imported when used.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor, nn

from fieldkit.capabilities import HasLoraRank, HasLoraTargets
from fieldkit.errors import FieldkitError, GraphError

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

#: The adapter name a trained student's LoRA has (peft's default).
ADAPTER = "default"
#: The attribute under which fieldkit's diffusers fields hold their model (the backbone kit's
#: ``SharedAdapterField.transformer``): student parameter names start with it, LoRA files' names do not.
WRAPPER = "transformer."
#: The diffusers LoRA file (``load_lora_weights``' default ``weight_name``) and peft's adapter files.
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
_KEY = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")


class LoraSettings(Protocol):
    """What :func:`add_lora` reads (the graph's ``student.lora``)."""

    rank: int | None
    alpha: float | None
    dropout: float
    targets: list[str] | None


# -- adapters on a model ------------------------------------------------------------------------------------


def lora_targets(model: nn.Module) -> list[str]:
    """The modules LoRA adapts: the model's ``lora_targets`` if it names them, else every ``nn.Linear``.

    Linear layers are named in full (``blocks.0.image.mlp.0``): peft matches a target by name suffix, so a
    bare last component such as ``0`` (a layer of an ``nn.Sequential``) would also match ``blocks.0``.
    """
    if isinstance(model, HasLoraTargets) and model.lora_targets:
        return list(model.lora_targets)
    return sorted(name for name, m in model.named_modules() if isinstance(m, nn.Linear))


def add_lora(model: nn.Module, spec: LoraSettings) -> nn.Module:
    """Inject LoRA adapters in place (``W x + (alpha / r) B A x``, ``B = 0`` at start); only they train.

    The rank defaults to the model's ``lora_rank`` (e.g. Z-Image's 128), else 8; ``alpha`` to the rank.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = spec.targets or lora_targets(model)
    if not targets:
        raise GraphError("student.train is 'lora' but the model has no linear layers to adapt")
    rank = spec.rank or (model.lora_rank if isinstance(model, HasLoraRank) else 8)
    config = LoraConfig(
        r=rank,
        lora_alpha=spec.alpha or rank,  # type: ignore[arg-type]  # peft annotates int; any float scales
        lora_dropout=spec.dropout,
        target_modules=targets,
    )
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def tuner_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    """The peft LoRA layers of ``model`` with their qualified names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def lora_parameters(model: nn.Module, rank: int, targets: Sequence[str]) -> int:
    """Parameters of a rank-``rank`` LoRA of ``model``: ``r (in + out)`` over every ``nn.Linear`` whose name
    ends with a target (what peft adapts)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    )


# -- merged rollouts ----------------------------------------------------------------------------------------


class _DeltaWeights(Protocol):
    def get_delta_weight(self, adapter: str) -> Tensor: ...


def _mergeable(layer: LoraLayer, training: bool) -> list[str]:
    """The active adapters of a peft LoRA layer whose merge computes exactly what the layer computes:
    plain LoRA (no DoRA or other variant, no LoRA bias) without active dropout; ``[]`` if any is not."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    for a in adapters:
        dropout = layer.lora_dropout[a]
        if (
            a in getattr(layer, "lora_variant", {})
            or getattr(layer, "use_dora", {}).get(a, False)
            or getattr(layer, "lora_bias", {}).get(a, False)
            or not (isinstance(dropout, nn.Identity) or (dropout.p == 0 or not training))
        ):
            return []
    return adapters


def _is_shard(tensor: Tensor) -> bool:
    """Whether ``tensor`` is an FSDP shard (a DTensor): its forward gathers it, a swap would bypass that."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


@contextlib.contextmanager
def merged_lora(model: object) -> Iterator[Any]:
    """Run ``model``'s LoRA layers as plain layers with merged weights ``W + (alpha / r) B A`` (no grad).

    Un-merged, each adapted layer costs two extra small matmuls, a scale and an add per call; a rollout
    calls the student ~11 times per step with the same weights, so merging once per rollout makes each of
    those forwards a plain forward. The base weights are not touched: a merged copy is swapped in for the
    block and the original parameter object swapped back after it (no merge / unmerge rounding drift), so
    training continues on exactly the weights it had. Layers whose merge would change what they compute
    (DoRA, LoRA bias, active dropout) and FSDP-sharded layers stay as they are. Use under ``torch.no_grad``
    or inference mode. A field that is no ``nn.Module`` has no LoRA layers: it is run as it is.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no LoRA layers
        yield model
        return
    if not isinstance(model, nn.Module):
        yield model
        return
    swapped: list[tuple[LoraLayer, nn.Module, nn.Parameter]] = []
    try:
        for module in model.modules():
            if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                continue
            adapters = _mergeable(module, module.training)
            base = module.get_base_layer()
            weight = getattr(base, "weight", None)
            if not adapters or not isinstance(weight, nn.Parameter) or _is_shard(weight):
                continue
            with torch.autocast(weight.device.type, enabled=False):  # merge in the weights' own dtype
                deltas = cast(_DeltaWeights, module)  # each LoRA layer kind (linear, conv, ...) defines it
                merged = weight + sum(deltas.get_delta_weight(a) for a in adapters)
            base.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=False)
            module.merged_adapters = list(adapters)  # peft's forward now calls the base layer alone
            swapped.append((module, base, weight))
        yield model
    finally:
        for layer, base, weight in reversed(swapped):
            base.weight = weight
            layer.merged_adapters = []


def merge_and_strip(model: nn.Module, adapters: Iterable[str] | None = None) -> nn.Module:
    """Merge ``adapters`` (``None``: each layer's active ones) into the weights, ``W <- W + (alpha / r) B A``,
    in place, then replace every peft layer by its base layer: every other adapter is dropped and the model
    is a plain model again (what export saves). Returns ``model``."""
    names = None if adapters is None else set(adapters)
    for name, layer in tuner_layers(model):
        present = set(layer._all_available_adapter_names())
        chosen = None if names is None else sorted(names & present)
        if chosen is None or chosen:
            layer.merge(adapter_names=chosen)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for module in model.modules():  # diffusers' peft mixin remembers the adapters it loaded
        configs = getattr(module, "peft_config", None)
        if isinstance(configs, dict):
            configs.clear()
            vars(module)["_hf_peft_config_loaded"] = False
    return model


# -- one shared transformer, several hosted adapters --------------------------------------------------------


class AdapterSwitch:
    """The LoRA adapters hosted by one shared transformer, and which one is active.

    Every field over the transformer holds this same object. :meth:`activate` changes the peft layers only
    when another adapter (or the base alone) is asked for, so consecutive calls of one field cost nothing.
    """

    def __init__(self) -> None:
        self.hosted: list[str] = []
        self.active: str | None = None
        self._layers: list[BaseTunerLayer] | None = None

    def add(self, name: str) -> None:
        """Record a newly loaded adapter (peft activates what it loads; the next call resets the state)."""
        self.hosted.append(name)
        self._layers = None
        self.active = "\0stale"

    def activate(self, transformer: nn.Module, name: str | None) -> None:
        """Run the transformer with adapter ``name`` alone, or with none (``None``: the base)."""
        if not self.hosted or name == self.active:
            return
        if self._layers is None:
            self._layers = [m for _, m in tuner_layers(transformer)]
        for layer in self._layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name, inference_mode=True)  # teacher adapters never train
        self.active = name


def load_adapter(
    transformer: Any,  # a diffusers model: load_lora_adapter is its peft mixin's, not nn.Module's
    switch: AdapterSwitch,
    path: str | Path,
    name: str,
    *,
    pipeline: str,
    scale: float = 1.0,
    weight_name: str | None = None,
) -> None:
    """Load the LoRA at ``path`` (a folder or file in any format ``diffusers.<pipeline>.lora_state_dict``
    reads) into ``transformer`` as adapter ``name``, scaled by ``scale``, frozen; ``switch`` records it."""
    from peft.tuners.lora import LoraLayer

    reader = getattr(importlib.import_module("diffusers"), pipeline)
    if name in switch.hosted:
        raise FieldkitError(f"this base already has an adapter named {name!r}", hint="choose another name")
    path = Path(path)
    if path.is_file():
        path, weight_name = path.parent, weight_name or path.name
    state, metadata = reader.lora_state_dict(
        str(path), weight_name=weight_name, return_lora_metadata=True, local_files_only=True
    )
    if not any(k.startswith(WRAPPER) for k in state):
        raise FieldkitError(f"{path}: no transformer LoRA weights (keys starting with {WRAPPER!r})")
    with warnings.catch_warnings():  # several adapters on one model is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.load_lora_adapter(state, prefix=WRAPPER[:-1], adapter_name=name, metadata=metadata)
    switch.add(name)
    for _, layer in tuner_layers(transformer):
        if isinstance(layer, LoraLayer):
            layer.set_scale(name, scale)
    transformer.requires_grad_(False)


# -- files --------------------------------------------------------------------------------------------------


def lora_tensors(state: Mapping[str, Tensor], adapter: str = ADAPTER) -> dict[str, Tensor]:
    """A model's LoRA tensors of ``adapter`` (``<module>.lora_A.<adapter>.weight``, as peft names them in a
    live model) by the names of saved LoRA files (``<module>.lora_A.weight``), relative to the diffusers
    model: fieldkit's :data:`WRAPPER` prefix is dropped when every name has it."""
    out = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match and match["adapter"] == adapter:
            out[f"{match['module']}.{match['kind']}.weight"] = value.detach().cpu().contiguous()
    if not out:
        raise FieldkitError(
            f"no LoRA weights of adapter {adapter!r} found", hint="was the student trained with lora?"
        )
    if all(k.startswith(WRAPPER) for k in out):
        out = {k.removeprefix(WRAPPER): v for k, v in out.items()}
    return out


def lora_config(tensors: Mapping[str, Tensor], alpha: float | None, dropout: float = 0.0) -> dict[str, Any]:
    """The ``LoraConfig`` keys of saved-form LoRA tensors: the rank read from ``lora_A`` (``[r, in]``), the
    targets from the module names, ``alpha`` defaulting to the rank (what :func:`add_lora` trained with)."""
    ranks = {v.shape[0] for k, v in tensors.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise FieldkitError(f"the LoRA tensors have ranks {sorted(ranks)}; expected one")
    rank = ranks.pop()
    return {
        "r": rank,
        "lora_alpha": alpha or rank,
        "target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in tensors}),
        "lora_dropout": dropout,
        "bias": "none",
    }


def save_lora(
    folder: Path,
    tensors: Mapping[str, Tensor],
    *,
    alpha: float | None = None,
    dropout: float = 0.0,
    base_model: str | None = None,
    diffusers: bool = True,
) -> dict[str, Any]:
    """Write saved-form LoRA ``tensors`` (see :func:`lora_tensors`) to ``folder`` (created):
    ``adapter_config.json`` + ``adapter_model.safetensors`` (``PeftModel.from_pretrained``) and, for a
    diffusers model (``diffusers``), ``pytorch_lora_weights.safetensors`` with its config as metadata (a
    pipeline's ``load_lora_weights``). ``base_model`` is the config's ``base_model_name_or_path``. Returns
    the config."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    config = lora_config(tensors, alpha, dropout)
    folder.mkdir(parents=True, exist_ok=True)
    LoraConfig(**config, base_model_name_or_path=base_model).save_pretrained(str(folder))
    save_file(
        {f"base_model.model.{k}": v for k, v in tensors.items()},
        str(folder / PEFT_WEIGHTS),
        metadata={"format": "pt"},
    )
    if not diffusers:
        return config
    packed = {f"{WRAPPER}{k}": v for k, v in config.items()}  # diffusers' metadata, per pipeline component
    save_file(
        {f"{WRAPPER}{k}": v for k, v in tensors.items()},
        str(folder / DIFFUSERS_WEIGHTS),
        metadata={"format": "pt", "lora_adapter_metadata": json.dumps(packed, sort_keys=True)},
    )
    return config


def random_lora(
    transformer: Any,  # a diffusers model: add_adapter is its peft mixin's, not nn.Module's
    targets: Sequence[str],
    out: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    std: float = 0.05,
) -> Path:
    """Write a random LoRA (``B != 0``) for ``transformer``'s ``targets`` with :func:`save_lora`: a stand-in,
    in tests and tiny examples, for an edit or style LoRA trained elsewhere. ``transformer`` is left with
    the adapter in it."""
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * std)
    save_lora(out, lora_tensors(dict(transformer.named_parameters())))
    return out


# -- a LoRA over a fieldkit model, sharing its weights -------------------------------------------------------


def read_lora(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``LoraConfig`` keys and saved-form tensors (``<module>.lora_A.weight``) of a peft LoRA folder
    (:func:`save_lora`'s ``adapter_config.json`` + ``adapter_model.safetensors``)."""
    from safetensors.torch import load_file

    config_file, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    for file in (config_file, weights):
        if not file.is_file():
            raise FieldkitError(
                f"{file} is missing",
                hint="point at a folder written by `fieldkit export RUN --format peft` (save_lora)",
            )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise FieldkitError(f"{config_file} is not readable JSON: {err}") from err
    keys = ("r", "lora_alpha", "target_modules", "lora_dropout", "bias")
    if not isinstance(config, dict) or any(k not in config for k in keys):
        raise FieldkitError(f"{config_file} is not a peft LoRA config (it needs {', '.join(keys)})")
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_file(str(weights)).items()}
    return {k: config[k] for k in keys}, tensors


def lora_over(base: nn.Module, folder: Path, name: str, *, scale: float = 1.0) -> nn.Module:
    """A frozen twin of ``base`` computing ``W x + scale (alpha / r) B A x`` with the LoRA at ``folder`` (a
    peft folder, see :func:`read_lora`) as adapter ``name``.

    The twin's modules are its own (peft wraps them; ``base`` is left exactly as it was), but every parameter
    and buffer *is* ``base``'s: N adapters over one base cost one base plus N adapters in memory. A deep copy
    of the twin is a full copy; :func:`fieldkit.merge.merge_models` merges its adapter into the weights.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config, tensors = read_lora(folder)
    shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
    twin = copy.deepcopy(base, shared)
    with warnings.catch_warnings():  # peft warns that the (frozen) base has no trainable adapter yet
        warnings.filterwarnings("ignore", category=UserWarning)
        inject_adapter_in_model(LoraConfig(**config), twin, adapter_name=name)
    state = {}
    for key, value in tensors.items():
        module, _, kind = key.rpartition(".lora_")
        state[f"{module}.lora_{kind.removesuffix('.weight')}.{name}.weight"] = value
    own = {k: v.shape for k, v in twin.state_dict().items() if ".lora_" in k}
    odd = sorted(k for k in own.keys() | state.keys() if own.get(k) != getattr(state.get(k), "shape", None))
    if odd:
        raise FieldkitError(
            f"{folder}: the LoRA does not fit this base ({', '.join(odd)}, ...)",
            hint="load it over the model it was trained from",
        )
    twin.load_state_dict(state, strict=False)
    for _, layer in tuner_layers(twin):
        cast("LoraLayer", layer).set_scale(name, scale)
    for key, param in twin.named_parameters():
        if ".lora_" in key:
            param.requires_grad_(False)
    return twin.eval()

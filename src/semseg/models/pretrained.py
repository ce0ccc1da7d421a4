"""Starting a training from earlier weights: an earlier semseg run (``model.init_from``) or a whole
pretrained smp model (``model.from_pretrained``). Every tensor whose name and shape fit is loaded,
the first convolution is adapted to ``data.in_channels``, and the rest stays as built (a head for
another class set, say)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import nn

from semseg.errors import ConfigError
from semseg.models.weights import HUB_HOST, hub_files_at_hand
from semseg.run_folder import UnusableCheckpoint, open_checkpoint

# What smp's save_pretrained writes (Hugging Face's hub mixin): the constructor's arguments and the weights.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "pytorch_model.bin"
# model.from_pretrained's config replaces these: they describe the architecture, which is the folder's.
REPLACED_BY_FROM_PRETRAINED = (
    "arch",
    "encoder_name",
    "encoder_weights",
    "variant",
    "output_stride",
    "atrous_rates",
    "decoder_channels",
)
# The folder's constructor arguments semseg sets itself: the data's classes and channels, logits
# for the loss (no activation), one output (no auxiliary classification head).
SET_BY_SEMSEG = {"classes", "in_channels", "activation", "aux_params", "encoder_name", "encoder_weights"}
NAMES_SHOWN = 6


@dataclass(frozen=True)
class Source:
    """Weights to start from: the architecture's tensors (names as in ``SegmentationNet.architecture``)
    and, for messages, what network they come from."""

    tensors: dict[str, torch.Tensor]
    description: str


@dataclass(frozen=True)
class Transfer:
    """What ``fitting_tensors`` found: the tensors to load (by name), those of them adapted to the
    input channels, the network's tensors left as built, and the source's tensors nothing takes."""

    tensors: dict[str, torch.Tensor]
    adapted: list[str]
    skipped: list[str]
    unused: list[str]

    @property
    def loaded(self) -> list[str]:
        return list(self.tensors)

    def summary(self, key: str, source: str, description: str) -> str:
        total = len(self.loaded) + len(self.skipped)
        line = f"{key}={source} ({description}): loaded {len(self.loaded)} of the network's {total} tensors"
        if self.adapted:
            line += f" ({shortened(self.adapted)} adapted to the input channels)"
        if self.skipped:
            line += f"; {len(self.skipped)} re-initialised (nothing of that name and shape): {shortened(self.skipped)}"
        if self.unused:
            line += f"; {len(self.unused)} of its tensors unused"
        return line


def shortened(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown if len(names) <= NAMES_SHOWN else f"{shown} and {len(names) - NAMES_SHOWN} more"


# ---- model.from_pretrained: the architecture of a save_pretrained folder or hub model ----


def _is_hub_id(source: str) -> bool:
    """``owner/name`` on the Hugging Face hub, as opposed to a local path that does not exist."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _pretrained_file(source: str, filename: str, key: str) -> Path:
    """``filename`` of a local save_pretrained folder, or of a hub model (downloaded once, then cached)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / filename
    if not _is_hub_id(source):
        raise ConfigError(
            f"{key}={source}: no such folder. Give a folder written by smp's save_pretrained "
            "(export.py format=smp writes one) or a Hugging Face hub model id (owner/name)."
        )
    if not hub_files_at_hand(source, [CONFIG_FILE, WEIGHTS_FILE]):
        raise ConfigError(
            f"{key}={source}: the model is not in the local Hugging Face cache and {HUB_HOST} "
            "cannot be reached. Download it once online, or give a local save_pretrained folder."
        )
    try:
        return Path(hf_hub_download(source, filename))
    except (OSError, ValueError, EntryNotFoundError) as error:  # no such repository or file, a bad id
        raise ConfigError(f"{key}={source}: cannot fetch {filename} ({_first_line(error)}).") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def pretrained_config(source: str, key: str = "model.from_pretrained") -> dict[str, Any]:
    """The constructor arguments a save_pretrained folder (or hub model) was saved with."""
    path = _pretrained_file(source, CONFIG_FILE, key)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{key}={source}: no readable {CONFIG_FILE} ({_first_line(error)}); "
            "give a folder written by smp's save_pretrained (export.py format=smp writes one)."
        ) from error
    if not isinstance(config, dict) or "_model_class" not in config or "encoder_name" not in config:
        raise ConfigError(f"{key}={source}: its {CONFIG_FILE} does not describe an smp model.")
    return config


def resolve_from_pretrained(model: Mapping, architectures: Mapping[str, type]) -> dict[str, Any]:
    """The ``model`` config with the architecture of ``model.from_pretrained``: ``arch``,
    ``encoder_name`` and the constructor arguments (as ``kwargs``) are the folder's, ``model.kwargs``
    apply over them, and ``encoder_weights`` is null (the whole network's weights follow).

    The result is what the module saves as its hyper-parameters, so a checkpoint of the run
    describes its network without the folder (eval.py, export.py, resuming)."""
    config = pretrained_config(str(model["from_pretrained"]))
    arch = next((name for name, cls in architectures.items() if cls.__name__ == config["_model_class"]), None)
    if arch is None:
        raise ConfigError(
            f"model.from_pretrained={model['from_pretrained']}: its architecture {config['_model_class']} is not "
            f"one of {', '.join(sorted(architectures))}."
        )
    arguments = {k: v for k, v in config.items() if not k.startswith("_") and k not in SET_BY_SEMSEG}
    kept = {k: v for k, v in model.items() if k not in REPLACED_BY_FROM_PRETRAINED}
    return kept | {
        "arch": arch,
        "encoder_name": config["encoder_name"],
        "encoder_weights": None,
        "kwargs": arguments | dict(model.get("kwargs") or {}),
    }


def replaced_keys(model: Mapping, resolved: Mapping) -> list[str]:
    """The user's ``model`` keys that ``resolve_from_pretrained`` replaced by the folder's (for the log)."""
    replaced = [k for k in REPLACED_BY_FROM_PRETRAINED if model.get(k) is not None and model[k] != resolved.get(k)]
    return [f"model.{k}={model[k]}" for k in replaced]


def pretrained_source(source: str, key: str = "model.from_pretrained") -> Source:
    """The tensors of a save_pretrained folder or hub model."""
    config = pretrained_config(source, key)
    path = _pretrained_file(source, WEIGHTS_FILE, key)
    if not path.is_file():  # folders saved by older versions of the hub mixin
        path = path.with_name(LEGACY_WEIGHTS_FILE)
    if not path.is_file():
        raise ConfigError(f"{key}={source}: the folder has no weights ({WEIGHTS_FILE}).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:  # weights_only: a weights file must never run code when loaded
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign files fail anywhere in the readers
        raise ConfigError(f"{key}={source}: cannot read its weights {path.name} ({_first_line(error)}).") from error
    return Source(tensors, "smp " + _described(config["_model_class"], config["encoder_name"], config))


def _described(arch: str, encoder: str, sizes: Mapping) -> str:
    return f"{arch} on {encoder}, {sizes.get('classes')} classes, {sizes.get('in_channels')} input channels"


# ---- model.init_from: an earlier semseg run's checkpoint ----


def checkpoint_source(path: str) -> Source:
    """The network's tensors of a semseg checkpoint (or, for a folder, of a save_pretrained folder)."""
    if Path(path).expanduser().is_dir():
        return pretrained_source(path, "model.init_from")
    try:
        checkpoint = open_checkpoint(path, ("state_dict",))
    except UnusableCheckpoint as error:
        raise ConfigError(
            f"model.init_from={path}: {error}. Give a checkpoint of an earlier semseg run "
            "(<run folder>/checkpoints/best.ckpt) or a folder written by export.py format=smp."
        ) from error
    # The network's tensors are net.architecture.* (net.* in checkpoints written before that name).
    tensors = {}
    for name, tensor in checkpoint["state_dict"].items():
        if name.startswith("net."):
            tensors[name.removeprefix("net.").removeprefix("architecture.")] = tensor
    hparams = checkpoint.get("hyper_parameters") or {}
    model = hparams.get("model") or {}
    sizes = {"classes": hparams.get("num_classes"), "in_channels": hparams.get("in_channels")}
    return Source(tensors, "semseg " + _described(model.get("arch"), model.get("encoder_name"), sizes))


# ---- loading what fits ----


def encoder_tensor_names(architecture: nn.Module) -> set[str]:
    """The state-dict names of the encoder's tensors: ``encoder.*`` in smp's architectures, the
    backbone's wherever it sits in others (mask classification's transformers models)."""
    own = {id(t) for t in (*architecture.encoder.parameters(), *architecture.encoder.buffers())}
    tensors = (*architecture.named_parameters(), *architecture.named_buffers())
    return {name for name, tensor in tensors if id(tensor) in own}


def _first_conv_weight(architecture: nn.Module, in_channels: int) -> str | None:
    """The name of the weight of the encoder's first convolution (the one that sees the image),
    found as smp's ``patch_first_conv`` finds it."""
    names = {id(parameter): name for name, parameter in architecture.named_parameters()}
    for module in architecture.encoder.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == in_channels:
            return names.get(id(module.weight))
    return None


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weight for ``in_channels`` inputs, adapted as smp adapts pretrained
    RGB filters (``patch_first_conv``: summed for one channel, else cycled and rescaled)."""
    out_channels, channels, *kernel = weight.shape
    conv = nn.Conv2d(channels, out_channels, tuple(kernel), bias=False)
    conv.weight = nn.Parameter(weight.detach().float().clone())
    patch_first_conv(conv, in_channels, default_in_channels=channels, pretrained=True)
    return conv.weight.detach()


def _differ_in_input_channels_only(source: torch.Tensor, target: torch.Tensor) -> bool:
    return source.dim() == 4 and source.shape[:1] + source.shape[2:] == target.shape[:1] + target.shape[2:]


def fitting_tensors(architecture: nn.Module, tensors: Mapping[str, torch.Tensor], in_channels: int) -> Transfer:
    """Every tensor of ``tensors`` whose name and shape fit ``architecture``, and the first
    convolution adapted when only its input channels differ."""
    own = architecture.state_dict()
    first_conv = _first_conv_weight(architecture, in_channels)
    fitting, adapted = {}, []
    for name, target in own.items():
        source = tensors.get(name)
        if source is None:
            continue
        if source.shape == target.shape:
            fitting[name] = source
        elif name == first_conv and _differ_in_input_channels_only(source, target):
            fitting[name] = adapt_first_conv(source, in_channels)
            adapted.append(name)
    skipped = [name for name in own if name not in fitting]
    unused = [name for name in tensors if name not in fitting]
    return Transfer(fitting, adapted=adapted, skipped=skipped, unused=unused)


def start_from(net: nn.Module, model: Mapping, in_channels: int) -> tuple[str, Transfer]:
    """Loads the weights ``model.init_from`` (or else ``model.from_pretrained``) names into ``net``
    (a ``SegmentationNet``): every tensor that fits; the others keep their initial values. Returns
    the line for the log, saying what was loaded and what was not, and the ``Transfer``.

    Raises:
        ConfigError: the file or folder is missing or damaged, or none of its encoder's tensors fit.
    """
    key = "model.init_from" if model.get("init_from") else "model.from_pretrained"
    value = str(model.get("init_from") or model["from_pretrained"])
    source = checkpoint_source(value) if key == "model.init_from" else pretrained_source(value)
    transfer = fitting_tensors(net.architecture, source.tensors, in_channels)
    # Another decoder on the same encoder still transfers the encoder; with no encoder tensor, what
    # fits is chance (a head's bias of as many classes), not a start.
    if not encoder_tensor_names(net.architecture) & set(transfer.loaded):
        raise ConfigError(
            f"{key}={value}: none of its encoder's tensors fit model.arch={model['arch']} with model.encoder_name="
            f"{model['encoder_name']}: it holds a {source.description}, a different network. Use its model.arch "
            "and model.encoder_name (another decoder on the same encoder still takes the encoder's weights)."
        )
    net.architecture.load_state_dict(transfer.tensors, strict=False)
    return transfer.summary(key, value, source.description), transfer

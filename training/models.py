"""Model construction: a torchvision ResNet, its starting weights, and which parameters train.

``weights`` is ``imagenet`` (official torchvision weights: the torch hub cache, else a download),
``none`` (random init), or a path to a state_dict file. ``finetune=head`` trains only the new ``fc``
layer on a frozen backbone; ``full`` trains everything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from model_code.inference import ARCHITECTURES, build_network

log = logging.getLogger(__name__)

__all__ = ["ARCHITECTURES", "FINETUNE_MODES", "WEIGHTS_KEYWORDS", "WEIGHTS_FALLBACKS", "LAYER_GROUPS",
           "WeightsUnavailable", "create_model", "pretrained_state", "imagenet_weights_file", "backbone_of",
           "layer_group"]

# ARCHITECTURES (resnet18, resnet34, resnet50) belongs to the inference handlers, which build the same network.
FINETUNE_MODES = ("head", "full")
WEIGHTS_KEYWORDS = ("imagenet", "none")  # else ``weights`` is a path to a state_dict file
WEIGHTS_FALLBACKS = ("error", "none")    # when ImageNet weights are unavailable: fail, or train from scratch
LAYER_GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for and could not be found; the message says how to supply them."""


def layer_group(name: str) -> str:
    """Parameter or module name -> one of LAYER_GROUPS (``layer3.1.conv2.weight`` -> ``layer3``)."""
    head = name.split(".", 1)[0]
    if head == "fc":
        return "head"
    return head if head.startswith("layer") else "stem"


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision caches the official ImageNet weights for ``arch``."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def pretrained_state(arch: str, weights: str) -> dict | None:
    """The starting state_dict for ``weights`` (None for ``none``); raises WeightsUnavailable."""
    if weights == "none":
        return None
    if weights == "imagenet":
        cached = imagenet_weights_file(arch)
        source = "torch hub cache" if cached.exists() else "download"
        try:
            state = torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(
                progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - offline, proxy, hash mismatch: all mean "not available"
            raise WeightsUnavailable(
                f"ImageNet weights for {arch} are not available: not in the cache at {cached} and "
                f"the download failed ({type(exc).__name__}: {exc}). Copy the file there, pass "
                f"--weights /path/to/{cached.name}, or pass --weights none to train from scratch."
            ) from None
        log.info("loaded ImageNet weights for %s from the %s (%s)", arch, source, cached.name)
        return state
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path} (use {', '.join(WEIGHTS_KEYWORDS)}, or a file path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # a checkpoint dict rather than a bare state_dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    log.info("loaded weights for %s from %s", arch, path)
    return state


def create_model(arch: str, num_classes: int, weights: str, finetune: str) -> nn.Module:
    """A ResNet with ``num_classes`` outputs, started from ``weights``, frozen per ``finetune``."""
    if finetune not in FINETUNE_MODES:
        raise ValueError(f"unknown finetune {finetune!r}: choose one of {', '.join(FINETUNE_MODES)}")
    net = build_network(arch, num_classes)
    state = pretrained_state(arch, weights)
    if state is not None:
        own = net.state_dict()
        # The new head keeps its fresh init unless the file's head has exactly our shape.
        state = {k: v for k, v in state.items()
                 if not k.startswith("fc.") or (k in own and own[k].shape == v.shape)}
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise WeightsUnavailable(
                f"weights {weights} do not fit {arch}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for name, param in net.named_parameters():
        param.requires_grad = finetune == "full" or name.startswith("fc.")
    return net


def backbone_of(net: nn.Module) -> nn.Module:
    """Everything before ``fc``, ending in a flat feature vector; shares modules with ``net``."""
    return nn.Sequential(*list(net.children())[:-1], nn.Flatten(1))

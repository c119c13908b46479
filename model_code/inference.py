"""Inference handlers for the SageMaker PyTorch serving container, the local server and batch transform.

This one file is copied into every model artifact as ``code/inference.py`` and must work there on its
own: it imports only torch, torchvision, numpy and Pillow. The training job imports the network
constructor, the image decoder and the eval transform from here, so what is served is exactly what
was evaluated.

Handler contract (DESIGN.md, Contract 2): ``model_fn(model_dir)``, ``input_fn(body, content_type)``,
``predict_fn(data, model)``, ``output_fn(prediction, accept)``.

``model_fn`` serves the fastest *serving variant* of the network (channels_last frozen fp32, bf16) that
the training job checked against eager fp32 and recorded as passed in model.json, that this machine runs
natively and that passes a self-check here; otherwise eager fp32, with one log line saying why.
``DOGBREEDS_INFERENCE_VARIANT=eager`` (or a variant's name) overrides the choice. The variants live in
this file, not a module of their own, because a model artifact's code/ must work with inference.py alone.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torchvision import models
from torchvision.transforms import v2 as T

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger("dogbreeds.inference")

# Realtime endpoints refuse bodies over 6 MB; decompression bombs are stopped by pixel count.
MAX_BODY_BYTES = int(os.environ.get("DOGBREEDS_MAX_BODY_BYTES", 6 * 1024 * 1024))
MAX_PIXELS = int(os.environ.get("DOGBREEDS_MAX_PIXELS", 40_000_000))

try:  # Inside the SageMaker serving container: its toolkit turns these into the given HTTP status.
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # Everywhere else: same attributes, plain exception.
    class _ToolkitError(Exception):
        def __init__(self, status_code: int, message: str, phrase: str):
            self.status_code, self.message, self.phrase = status_code, message, phrase
            super().__init__(status_code, message, phrase)


class ClientError(_ToolkitError):
    """A request the client must fix: ``status_code`` is 400, 406, 413 or 415, ``message`` says why."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, message, message)

    def __str__(self) -> str:
        return self.message


def display_label(class_folder: str) -> str:
    """The label shown to people (Contract 1): the class folder name without its numeric prefix,
    ``001.Affenpinscher`` -> ``Affenpinscher``; a name without one is returned as it is."""
    return re.sub(r"^\d+\.", "", class_folder)


def build_network(arch: str, num_classes: int) -> nn.Module:
    """A torchvision ResNet with random weights and a new ``fc`` head of ``num_classes`` outputs."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    net = getattr(models, arch)(weights=None)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def resize_size_for(image_size: int) -> int:
    """The shorter-side resize before the centre crop, in the ImageNet 256/224 proportion."""
    return int(round(image_size * 256 / 224))


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Callable:
    """PIL RGB image -> normalised float tensor (3, image_size, image_size): resize, centre crop."""
    return T.Compose([
        T.PILToTensor(),
        T.Resize(resize_size_for(image_size), antialias=True),
        T.CenterCrop(image_size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
    ])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha composited on white, 16-bit and float scaled, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr, top = arr - lo, (hi - lo) or 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


# Only these decoders ever see request bytes; others (EPS runs Ghostscript, for one) stay unreachable.
# Multi-picture JPEGs (MPO, from phones) come through the JPEG decoder.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"
_open_formats: tuple[str, ...] = ()


def _decoders() -> tuple[str, ...]:
    """IMAGE_FORMATS that this Pillow build can open (WebP may be compiled out)."""
    global _open_formats
    if not _open_formats:
        Image.init()
        _open_formats = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
    return _open_formats


def open_image(source, max_pixels: int = MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode bytes, a path or a file object into an upright RGB image.

    Raises ClientError(400) for empty, unreadable or truncated data and ClientError(413) for images
    over ``max_pixels``. ``draft_size`` lets the JPEG decoder downscale while decoding (a large speed-up
    when the target is small); the result stays at least ``draft_size`` on each side.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ClientError(400, "empty body: expected image bytes")
        source = io.BytesIO(bytes(source))
    try:
        img = Image.open(source, formats=_decoders())
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image too large to decode safely: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ClientError(400, f"not an image: the data is not {_FORMAT_NAMES}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ClientError(400, f"not an image Pillow can read ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ClientError(413, f"image is {width}x{height} = {width * height:,} pixels, over the "
                               f"limit of {max_pixels:,} pixels")
    if draft_size and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated data, broken chunks
        raise ClientError(400, f"image data is corrupt or truncated ({exc})") from None
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:  # a mode this Pillow build cannot convert to RGB
        raise ClientError(400, f"unsupported {img.format} image mode {img.mode} ({exc})") from None


def load_image_file(path: str | Path, image_size: int) -> Image.Image:
    """Open a training or batch image from disk, decoding JPEGs at reduced size when that is lossless
    for the resize that follows."""
    return open_image(path, draft_size=resize_size_for(image_size))


# ---------------------------------------------------------------------------------------------------
# SageMaker handlers. The toolkit calls them by parameter count: keep exactly these parameters.
# ---------------------------------------------------------------------------------------------------

MAX_IMAGES_PER_REQUEST = int(os.environ.get("DOGBREEDS_MAX_IMAGES_PER_REQUEST", 64))
MAX_REQUEST_PIXELS = int(os.environ.get("DOGBREEDS_MAX_REQUEST_PIXELS", 4 * MAX_PIXELS))
DEFAULT_TOP_K = 5          # Contract 2, defined here only: a request that asks for no top_k gets this many
JSON_TYPE = "application/json"
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/octet-stream")
SUPPORTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES + (JSON_TYPE,)
_JSON_ACCEPTS = (JSON_TYPE, "application/*", "*/*", "*")


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message names the file and what is wrong with it."""


@dataclass(eq=False)
class LoadedModel:
    """What ``model_fn`` returns: the network in eval mode on ``device`` plus what serving needs.

    ``network`` is always the eager fp32 module; ``forward`` is what actually runs (the chosen serving
    variant's logits function, or None for the eager network itself), named by ``variant``.
    """

    network: nn.Module
    classes: list[str]
    labels: list[str]
    image_size: int
    device: torch.device
    transform: Callable
    metadata: dict = field(default_factory=dict)  # model.json as read
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None
    variant: str = "eager"

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB PIL images -> float tensor (N, 3, image_size, image_size) on the CPU."""
        return torch.stack([self.transform(img) for img in images])

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """One forward pass: (N, 3, H, W) -> float32 softmax (N, num_classes) on the CPU."""
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            logits = (self.forward or self.network)(x)
            return torch.softmax(logits.float(), dim=1).cpu()


@dataclass
class InferenceRequest:
    """What ``input_fn`` returns: decoded upright RGB images in request order."""

    images: list[Image.Image]
    top_k: int | None = None  # from the JSON body or a Content-Type parameter; None = not asked
    is_list: bool = False     # the request used {"images": [...]}: reply {"results": [...]}
    explain: bool = False     # a Grad-CAM heatmap of each image's top-1 class was asked for


@dataclass
class InferenceResult:
    """What ``predict_fn`` returns: probabilities (N, num_classes) plus what ``output_fn`` needs."""

    probabilities: torch.Tensor
    classes: list[str]
    labels: list[str]
    top_k: int | None = None
    is_list: bool = False
    explanations: list[dict] | None = None  # per image, when the request asked (explain_fn)

    def ranked(self, top_k: int | None = None) -> list[list[dict]]:
        """Per image, the ``top_k`` best classes (default DEFAULT_TOP_K, clamped to [1, num_classes]) as
        ``{"label", "class", "index", "probability"}`` dicts, most probable first."""
        k = max(1, min(DEFAULT_TOP_K if top_k is None else top_k, len(self.classes)))
        probs, order = torch.sort(self.probabilities, dim=1, descending=True, stable=True)
        return [
            [{"label": self.labels[i], "class": self.classes[i], "index": i, "probability": round(p, 6)}
             for p, i in zip(row_p[:k].tolist(), row_i[:k].tolist())]
            for row_p, row_i in zip(probs, order)
        ]


def model_fn(model_dir) -> LoadedModel:
    """Load ``model_dir/model.json`` and ``model_dir/model.pth`` onto CUDA if available, else CPU.

    Raises ModelLoadError naming the file when either is missing, unreadable or inconsistent.
    """
    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / "model.json", model_dir / "model.pth"
    for path in (meta_path, weights_path):
        if not path.is_file():
            found = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else "no such directory"
            raise ModelLoadError(f"{path.name} not found in {model_dir} (found: {found}); a model "
                                 "directory holds model.json and model.pth written by the training job")
    meta = _read_model_json(meta_path)
    arch, classes = meta["arch"], meta["classes"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    network = build_network(arch, len(classes)).to(device)
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{weights_path} is not a loadable weights-only state_dict "
                             f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"{weights_path} holds a {type(state).__name__}, expected a state_dict")
    for prefix in ("module.", "_orig_mod."):  # saved from DataParallel or torch.compile wrappers
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"{weights_path} does not fit {arch} with {len(classes)} classes as "
                             f"model.json says: {exc}") from exc
    network.eval()
    forced = _forced_variant()
    variant, forward, why = choose_variant(network, meta["image_size"], meta.get("variants"), device, forced)
    if variant == EAGER:  # a warning when a variant was expected: forced, or recorded by the training job
        expected = forced != EAGER and (forced is not None or bool(meta.get("variants")))
        log.log(logging.WARNING if expected else logging.INFO, "serving eager fp32 for %s: %s", model_dir, why)
    else:
        log.info("serving variant %s for %s: %s", variant, model_dir, why)
    norm = meta["normalization"]
    return LoadedModel(network=network, classes=classes, labels=meta["labels"],
                       image_size=meta["image_size"], device=device,
                       transform=eval_transform(meta["image_size"], norm["mean"], norm["std"]),
                       metadata=meta, forward=forward, variant=variant)


def _forced_variant() -> str | None:
    """``DOGBREEDS_INFERENCE_VARIANT``: ``eager`` or a variant's name; unset, empty or ``auto`` = choose."""
    value = os.environ.get(VARIANT_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value != EAGER and value not in VARIANTS:
        raise ModelLoadError(f"{VARIANT_ENV}={value!r} is not one of auto, {EAGER}, {', '.join(VARIANTS)}")
    return value


def _read_model_json(path: Path) -> dict:
    """model.json, checked, with defaults filled in for labels, image_size and normalization."""
    def bad(problem: str):
        return ModelLoadError(f"{path}: {problem}")

    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise bad("expected a JSON object")
    if meta.get("format_version", 1) != 1:
        raise bad(f"format_version {meta['format_version']!r} is not understood (this code reads 1)")
    if meta.get("arch") not in ARCHITECTURES:
        raise bad(f"arch {meta.get('arch')!r} is not one of {', '.join(ARCHITECTURES)}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad('"classes" must be a non-empty list of class folder names')
    labels = meta.setdefault("labels", [display_label(c) for c in classes])
    if not isinstance(labels, list) or len(labels) != len(classes) or not all(isinstance(x, str) for x in labels):
        raise bad(f'"labels" must be a list of {len(classes)} strings, one per class')
    size = meta.setdefault("image_size", 224)
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise bad(f'"image_size" must be an integer >= 16, got {size!r}')
    norm = meta.get("normalization") or {}
    mean, std = norm.get("mean", list(IMAGENET_MEAN)), norm.get("std", list(IMAGENET_STD))
    for name, values in (("mean", mean), ("std", std)):
        if not (isinstance(values, list) and len(values) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise bad(f'"normalization.{name}" must be a list of 3 numbers, got {values!r}')
    if not all(v > 0 for v in std):
        raise bad(f'"normalization.std" must be positive, got {std!r}')
    meta["normalization"] = {**norm, "mean": mean, "std": std}
    return meta


# ---------------------------------------------------------------------------------------------------
# Serving variants: faster forms of the trained network, rebuilt from the fp32 weights at load time, so
# no serialized graph has to load under the serving container's torch (older than the training one).
# The training job checks each against eager fp32 on the validation split (check_variants) and records
# the results in model.json "variants"; model_fn serves the fastest that passed and runs here
# (choose_variant). The mechanisms and their measured speed-ups: bench/README.md.
# ---------------------------------------------------------------------------------------------------

EAGER = "eager"
VARIANT_ENV = "DOGBREEDS_INFERENCE_VARIANT"
EXACT_MAX_PROB_DIFF = 1e-4   # an fp32 variant's probabilities stay this close to eager's
MIN_TOP1_AGREEMENT = 0.995   # a reduced-precision variant picks eager's top class this often
MAX_ACCURACY_DROP = 0.005    # ... and loses at most half a point of accuracy
# The load-time self-check catches a variant that is broken on this machine, not small drift (the
# validation check did that): reduced precision may move a probability by a few hundredths.
SELF_CHECK_REDUCED_MAX_PROB_DIFF = 0.05


@dataclass(frozen=True)
class Variant:
    """One way to run the network. ``build(network)`` -> a logits function of a batch on the network's
    device (the eager network is left untouched); ``unsupported(device)`` -> why this machine cannot run
    it natively, or None. ``exact``: fp32 arithmetic, held to EXACT_MAX_PROB_DIFF."""

    name: str
    exact: bool
    build: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    unsupported: Callable[[torch.device], str | None]


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _native_bf16(device: torch.device) -> str | None:
    if _torchscript(device):
        return _torchscript(device)
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return None if capability >= (8, 0) else f"GPU compute capability {capability} has no native bf16"
    if cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"}:
        return None
    return "this CPU has no avx512_bf16, amx_bf16 or bf16 flag (bf16 would be emulated, slower than fp32)"


def _torchscript(device: torch.device) -> str | None:
    return None if callable(getattr(torch.jit, "freeze", None)) else f"torch {torch.__version__} has no jit.freeze"


def _frozen_graph(network: nn.Module) -> torch.jit.ScriptModule:
    """A frozen TorchScript graph of a copy of ``network``: batch norm folded into the convolutions,
    weights constant. Built from the weights here, so no serialized graph crosses torch versions."""
    with warnings.catch_warnings():  # TorchScript's deprecation notice: still the cheapest exact speed-up
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.script(network))


def _bf16_channels_last(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """bf16 weights and NHWC activations in a frozen graph: oneDNN / cuDNN bf16 convolutions. Weights
    cast once (autocast would cast them on every call: 10-20% slower at batch 1)."""
    graph = _frozen_graph(copy.deepcopy(network).eval().to(memory_format=torch.channels_last).to(torch.bfloat16))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return graph(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()
    return forward


def _fp32_frozen_channels_last(network: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """fp32 in a frozen graph, NHWC activations."""
    graph = _frozen_graph(copy.deepcopy(network).eval().to(memory_format=torch.channels_last))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return graph(x.contiguous(memory_format=torch.channels_last))
    return forward


# Fastest first: model_fn serves the first one that passed and works here.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("bf16-cl", exact=False, build=_bf16_channels_last, unsupported=_native_bf16),
    Variant("fp32-frozen-cl", exact=True, build=_fp32_frozen_channels_last, unsupported=_torchscript),
)}


@dataclass
class VariantCheck:
    """A variant against eager fp32 over the validation images: what model.json records under its name."""

    passed: bool
    exact: bool
    images: int = 0
    top1_agreement: float | None = None   # share of images where both pick the same class
    accuracy: float | None = None
    eager_accuracy: float | None = None
    max_prob_diff: float | None = None    # largest |p_variant - p_eager| over every image and class
    reason: str = ""                      # why it did not pass

    def record(self) -> dict:
        return asdict(self)


def judge(exact: bool, images: int, top1_agreement: float, accuracy: float, eager_accuracy: float,
          max_prob_diff: float) -> VariantCheck:
    """Pass or fail one variant's numbers by the rule for its kind (fp32 exact, or reduced precision)."""
    numbers = dict(images=images, top1_agreement=top1_agreement, accuracy=accuracy,
                   eager_accuracy=eager_accuracy, max_prob_diff=max_prob_diff)
    if images == 0:
        return VariantCheck(False, exact, **numbers, reason="no validation images to check against")
    if exact:
        ok = max_prob_diff <= EXACT_MAX_PROB_DIFF
        reason = "" if ok else f"max probability difference {max_prob_diff:.3g} > {EXACT_MAX_PROB_DIFF:g}"
    else:
        problems = []
        if top1_agreement < MIN_TOP1_AGREEMENT:
            problems.append(f"top-1 agreement {top1_agreement:.4f} < {MIN_TOP1_AGREEMENT}")
        if eager_accuracy - accuracy > MAX_ACCURACY_DROP:
            problems.append(f"accuracy {accuracy:.4f} is more than {MAX_ACCURACY_DROP} below eager's "
                            f"{eager_accuracy:.4f}")
        ok, reason = not problems, "; ".join(problems)
    return VariantCheck(ok, exact, **numbers, reason=reason)


def check_variants(network: nn.Module, batches, variants=None) -> dict[str, VariantCheck]:
    """Run eager fp32 and every variant over ``batches`` (an iterable of (inputs, targets) tensors) once,
    and judge each variant against eager. A variant that fails to build or run fails with the reason.
    ``network``: the eager module in eval mode, on the device to check on."""
    variants = list((variants or VARIANTS).values())
    device = next(network.parameters()).device
    forwards, failures = {}, {}
    for v in variants:
        try:
            forwards[v.name] = v.build(network)
        except Exception as exc:  # a graph this torch cannot build: fails that variant only
            failures[v.name] = f"build failed: {type(exc).__name__}: {exc}"
    seen, eager_correct = 0, 0
    agree = {name: 0 for name in forwards}
    correct = {name: 0 for name in forwards}
    max_diff = {name: 0.0 for name in forwards}
    with torch.inference_mode():
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            eager = torch.softmax(network(inputs).float(), dim=1)
            eager_top = eager.argmax(1)
            seen += len(targets)
            eager_correct += (eager_top == targets).sum().item()
            for name in list(forwards):
                try:
                    probs = torch.softmax(forwards[name](inputs).float(), dim=1)
                except Exception as exc:
                    failures[name] = f"forward failed: {type(exc).__name__}: {exc}"
                    del forwards[name]
                    continue
                top = probs.argmax(1)
                agree[name] += (top == eager_top).sum().item()
                correct[name] += (top == targets).sum().item()
                max_diff[name] = max(max_diff[name], (probs - eager).abs().max().item())
    checks = {}
    for v in variants:
        if v.name in failures:
            checks[v.name] = VariantCheck(False, v.exact, reason=failures[v.name])
            continue
        rate = (lambda count: count / seen if seen else 0.0)  # noqa: E731
        checks[v.name] = judge(v.exact, seen, rate(agree[v.name]), rate(correct[v.name]), rate(eager_correct),
                               max_diff[v.name])
    return checks


def self_check_input(image_size: int, count: int = 4) -> torch.Tensor:
    """A fixed, image-like batch (smooth random colour fields, roughly normalised) for load-time checks."""
    generator = torch.Generator().manual_seed(1234)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    fields = nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (fields - 0.45) / 0.25


def self_check(variant: Variant, forward, network: nn.Module, image_size: int) -> str | None:
    """Why ``forward`` disagrees with the eager ``network`` on self_check_input here, or None if it agrees."""
    device = next(network.parameters()).device
    x = self_check_input(image_size).to(device)
    with torch.inference_mode():
        expected = torch.softmax(network(x).float(), dim=1)
        got = torch.softmax(forward(x).float(), dim=1)
        forward(x)  # a second call: a graph executor may switch to its optimised plan now
    limit = EXACT_MAX_PROB_DIFF if variant.exact else SELF_CHECK_REDUCED_MAX_PROB_DIFF
    diff = (got - expected).abs().max().item()
    if not diff <= limit:  # NaN fails too
        return f"self-check on a fixed input: max probability difference {diff:.3g} > {limit:g}"
    return None


def choose_variant(network: nn.Module, image_size: int, recorded: dict | None, device: torch.device,
                   forced: str | None = None) -> tuple[str, Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """(name, logits function or None for eager, why) for this machine.

    ``recorded``: model.json's "variants" (name -> VariantCheck.record()). Candidates are the variants
    recorded as passed, fastest first; ``forced`` (a variant's name or EAGER) replaces them with that one,
    recorded or not. A candidate is taken when this machine runs it natively, it builds, and it passes
    self_check; otherwise the next one is tried, and eager serves when none is left.
    """
    if forced == EAGER:
        return EAGER, None, f"{VARIANT_ENV}={EAGER}"
    recorded = recorded if isinstance(recorded, dict) else {}
    if forced:
        candidates = [forced]
    else:
        candidates = [name for name in VARIANTS
                      if isinstance(recorded.get(name), dict) and recorded[name].get("passed") is True]
        if not candidates:
            tried = ", ".join(f"{n} ({(r or {}).get('reason') or 'failed'})" for n, r in recorded.items()
                              if isinstance(r, dict)) if recorded else ""
            return EAGER, None, ("no variant passed the training job's validation check: " + tried if tried
                                 else "model.json records no checked serving variants")
    rejected = []
    for name in candidates:
        variant = VARIANTS[name]
        reason = variant.unsupported(device)
        if reason is None:
            try:
                forward = variant.build(network)
                reason = self_check(variant, forward, network, image_size)
            except Exception as exc:
                reason = f"cannot build here: {type(exc).__name__}: {exc}"
        if reason is None:
            how = f"forced by {VARIANT_ENV}" if forced else "passed the validation check and the self-check"
            if forced and name not in recorded:
                how += " (not checked by the training job)"
            return name, forward, how
        rejected.append(f"{name}: {reason}")
    return EAGER, None, "; ".join(rejected)


def input_fn(body, content_type) -> InferenceRequest:
    """Decode a request body into RGB images.

    ``body``: bytes, bytearray or str (the toolkit hands JSON over as str). ``content_type``: one of
    SUPPORTED_CONTENT_TYPES, parameters allowed (``image/jpeg; top_k=3``); missing = octet-stream.
    Image types carry raw image bytes whose format is sniffed from the bytes; ``application/json``
    carries ``{"image": "<base64>"}`` or ``{"images": ["<base64>", ...]}`` (a ``data:...;base64,``
    prefix is fine) and an optional ``"top_k"``. ``explain=true`` (a Content-Type parameter, or ``"explain":
    true`` in the JSON) asks for a heatmap of each image's top-1 class. Raises ClientError 400/413/415 saying
    what is wrong.
    """
    mime, params = _media_type(content_type)
    mime = mime or "application/octet-stream"
    if mime not in SUPPORTED_CONTENT_TYPES:
        raise ClientError(415, f"unsupported Content-Type {_short(content_type)}: send one of "
                               f"{', '.join(SUPPORTED_CONTENT_TYPES)}")
    if body is None:
        body = b""
    size = len(body.encode("utf-8")) if isinstance(body, str) else len(body)
    if size > MAX_BODY_BYTES:
        raise ClientError(413, f"request body is {size:,} bytes, over the limit of {MAX_BODY_BYTES:,} "
                               f"bytes ({MAX_BODY_BYTES / 2**20:g} MiB)")
    top_k = _top_k(params.get("top_k"), "the Content-Type parameter top_k")
    explain = _explain_flag(params.get("explain"), "the Content-Type parameter explain")
    if mime != JSON_TYPE:
        if isinstance(body, str):
            raise ClientError(400, f"{mime} body must be raw image bytes, not text")
        return InferenceRequest([_decode(body, None)], top_k, is_list=False, explain=explain)

    if size == 0:
        raise ClientError(400, 'empty body: expected JSON like {"image": "<base64>"}')
    try:
        doc = json.loads(body if isinstance(body, str) else bytes(body).decode("utf-8"))
    except UnicodeDecodeError:
        raise ClientError(400, "invalid JSON: the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ClientError(400, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # a number over 4300 digits, nesting too deep
        raise ClientError(400, f"invalid JSON: {str(exc)[:80]}") from None
    expected = 'send {"image": "<base64>"} or {"images": ["<base64>", ...]}'
    if not isinstance(doc, dict):
        raise ClientError(400, f"JSON body is {_json_kind(doc)}, not an object: {expected}")
    if ("image" in doc) == ("images" in doc):
        problem = "has both" if "image" in doc else "has no"
        raise ClientError(400, f'JSON body {problem} "image" and "images" fields: {expected}')
    if doc.get("top_k") is not None:
        top_k = _top_k(doc["top_k"], 'JSON field "top_k"', text=False)
    if doc.get("explain") is not None:
        explain = _explain_flag(doc["explain"], 'JSON field "explain"', text=False)
    if "image" in doc:
        return InferenceRequest([_decode(_base64(doc["image"], "image"), "image")], top_k, is_list=False,
                                explain=explain)

    items = doc["images"]
    if not isinstance(items, list):
        raise ClientError(400, f'"images" must be a list of base64 strings, got {_json_kind(items)}')
    if not items:
        raise ClientError(400, '"images" is an empty list: send at least one image')
    if len(items) > MAX_IMAGES_PER_REQUEST:
        raise ClientError(413, f"{len(items)} images in one request, over the limit of "
                               f"{MAX_IMAGES_PER_REQUEST}: split them over several requests")
    images, pixels = [], 0
    for i, item in enumerate(items):
        images.append(_decode(_base64(item, f"images[{i}]"), f"images[{i}]"))
        pixels += images[-1].width * images[-1].height
        if pixels > MAX_REQUEST_PIXELS:
            raise ClientError(413, f"images[0..{i}] hold {pixels:,} pixels together, over the limit of "
                                   f"{MAX_REQUEST_PIXELS:,} per request: send fewer or smaller images")
    return InferenceRequest(images, top_k, is_list=True, explain=explain)


def predict_fn(data: InferenceRequest, model: LoadedModel) -> InferenceResult:
    """All images of the request through the network in one batched forward pass (then explain_fn)."""
    probs = model.probabilities(model.preprocess(data.images))
    return explain_fn(data, model, InferenceResult(probs, model.classes, model.labels, data.top_k, data.is_list))


def explain_fn(data: InferenceRequest, model: LoadedModel, result: InferenceResult) -> InferenceResult:
    """``result`` with ``explanations`` when ``data.explain``: per image, a Grad-CAM heatmap of its top-1 class
    over the whole photo (``explain.py``); without the flag ``result`` as it is, at no cost. predict_fn calls
    it; a server that runs the forward itself (dogbreeds.serving) calls it after. The network explained is
    ``model.explain_network`` when a model sets one (an eager copy next to an optimised graph), else
    ``model.network``. ClientError(400) when that network cannot be explained."""
    if not data.explain:
        return result
    explain = _explain_module()
    targets = [row[0]["index"] for row in result.ranked(1)]
    network = getattr(model, "explain_network", None) or model.network
    try:
        found = explain.explain(network, model.transform, list(data.images), targets, model.image_size,
                                resize_size_for(model.image_size))
    except explain.NotExplainable as exc:
        raise ClientError(400, f"explain is not available for this model: {exc}") from None
    result.explanations = [{"class": model.classes[e["index"]], "label": model.labels[e["index"]], **e}
                           for e in found]
    return result


_explain_loaded = None  # the explain module, once loaded


def _explain_module():
    """explain.py, imported from the file next to this one on the first request that asks for an explanation:
    this file is imported on its own too (``code/`` in the container and the local server, scripts), where
    ``code/`` need not be on sys.path then, and it makes no relative imports."""
    global _explain_loaded
    if _explain_loaded is None:
        import importlib.util
        name = f"{__name__.replace('.', '_')}_explain"
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("explain.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _explain_loaded = module
    return _explain_loaded


def output_fn(prediction: InferenceResult, accept) -> tuple[str, str]:
    """Serialize to JSON; returns ``(body, "application/json")``.

    The toolkit's Transformer.transform sends a tuple's first item as the body and its second as the
    response Content-Type; a plain return would be labelled with the Accept value as sent (it may be
    a list or carry parameters). The toolkit swaps an empty or ``*/*`` Accept for its default
    (application/json) before calling. ``accept``: empty, ``*/*`` or ``application/json``, a list
    and a ``top_k=N`` parameter allowed; anything else raises ClientError(406).
    Body: ``{"predictions": [{"label", "class", "index", "probability"}, ...]}`` for a single image,
    ``{"results": [{"predictions": [...]}, ...]}`` for a list request, most probable first; with an
    ``"explanation": {"class", "label", "index", "heatmap", "width", "height"}`` next to each image's
    ``"predictions"`` when it was asked for (explain_fn). top_k is
    the request's, else the Accept parameter's, else DEFAULT_TOP_K, clamped to [1, num_classes].
    """
    accept_top_k = _accept_json(accept)
    top_k = prediction.top_k if prediction.top_k is not None else accept_top_k
    ranked = prediction.ranked(top_k)
    results = [{"predictions": preds} for preds in ranked]
    for result, explanation in zip(results, prediction.explanations or ()):
        result["explanation"] = explanation
    doc = {"results": results} if prediction.is_list else results[0]
    return json.dumps(doc, allow_nan=False), JSON_TYPE


def _media_type(value) -> tuple[str, dict[str, str]]:
    """'Image/JPEG; top_k=3' -> ('image/jpeg', {'top_k': '3'}); None -> ('', {})."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    mime, *parts = str(value or "").split(";")
    params = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return mime.strip().lower(), params


def _accept_json(accept) -> int | None:
    """Check that ``accept`` allows JSON; return the chosen entry's top_k parameter, if any."""
    text = bytes(accept).decode("latin-1") if isinstance(accept, (bytes, bytearray)) else str(accept or "")
    if not text.strip():
        return None
    choices = []
    for position, entry in enumerate(text.split(",")):
        mime, params = _media_type(entry)
        try:
            q = float(params.get("q", 1))
        except ValueError:
            q = 1.0
        if mime in _JSON_ACCEPTS and q > 0:
            choices.append((-q, position, params))
    if not choices:
        raise ClientError(406, f"cannot reply as Accept {_short(text)}: replies are {JSON_TYPE} "
                               f"(send Accept: {JSON_TYPE} or */*)")
    return _top_k(min(choices, key=lambda c: c[:2])[2].get("top_k"), "the Accept parameter top_k")


def _top_k(value, where: str, text: bool = True) -> int | None:
    """A non-negative integer or None when absent; ``text``: ASCII digits, blanks around them allowed
    (media-type parameters; the control plane reads the ``top_k`` query parameter by this rule too)."""
    if value is None:
        return None
    if text and isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        try:
            value = int(value.strip())
        except ValueError:  # over Python's limit on the digits of an int
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ClientError(400, f"{where} must be a non-negative integer, got {_short(value)}")
    return value


def _explain_flag(value, where: str, text: bool = True) -> bool:
    """``true``/``false`` (any case, for media-type and query parameters) or a JSON boolean; absent = False."""
    if value is None:
        return False
    if text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ClientError(400, f"{where} must be true or false, got {_short(value)}")
    return value


def _base64(item, where: str) -> bytes:
    """Decode one base64 image string (data-URL prefix, line breaks, URL-safe alphabet, missing
    padding tolerated); ClientError(400) naming ``where`` otherwise."""
    if not isinstance(item, str):
        raise ClientError(400, f"{where} must be a base64 string, got {_json_kind(item)}")
    text = item.strip()
    if text[:5].lower() == "data:":
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ClientError(400, f"{where} is a data URL without ';base64,' before the data")
    text = "".join(text.split()).translate(_URLSAFE)
    if not text:
        raise ClientError(400, f"{where} is empty: expected a base64-encoded image")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, f"{where} is not valid base64 (starts {_short(item, 24)})") from None


_URLSAFE = str.maketrans("-_", "+/")


def _decode(data, where: str | None) -> Image.Image:
    """open_image with the current MAX_PIXELS; errors name ``where`` (e.g. 'images[2]')."""
    try:
        return open_image(data, max_pixels=MAX_PIXELS)
    except ClientError as exc:
        if where is None:
            raise
        raise ClientError(exc.status_code, f"{where}: {exc.message}") from None


def _json_kind(value) -> str:
    """'an array', 'a number', ... for messages about JSON values."""
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"))
    return next((name for t, name in kinds if isinstance(value, t)), "an object")


def _short(value, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, for echoing client input in messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

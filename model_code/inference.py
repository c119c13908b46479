"""Inference handlers for the SageMaker PyTorch serving container, the local server and batch transform.

This one file is copied into every model artifact as ``code/inference.py`` and must work there on its
own: it imports only torch, torchvision, numpy and Pillow. The training job imports the network
constructor, the image decoder and the eval transform from here, so what is served is exactly what
was evaluated.

Handler contract (DESIGN.md, Contract 2): ``model_fn(model_dir)``, ``input_fn(body, content_type)``,
``predict_fn(data, model)``, ``output_fn(prediction, accept)``.
"""

from __future__ import annotations

import io
import os
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
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image too large to decode safely: {exc}") from None
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise ClientError(400, f"not an image Pillow can read ({type(exc).__name__}: {exc})") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ClientError(413, f"image is {width}x{height} = {width * height:,} pixels, over the "
                               f"limit of {max_pixels:,} pixels")
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ClientError(413, f"image too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated data, broken chunks
        raise ClientError(400, f"image data is corrupt or truncated ({exc})") from None
    return to_rgb(img)


def load_image_file(path: str | Path, image_size: int) -> Image.Image:
    """Open a training or batch image from disk, decoding JPEGs at reduced size when that is lossless
    for the resize that follows."""
    return open_image(path, draft_size=resize_size_for(image_size))

"""Grad-CAM: where in a photo the network looked for the class it chose.

Shipped next to ``inference.py`` in ``code/`` and loaded by it only when a request asks for an explanation,
so it imports only torch, numpy and Pillow. For each image, the gradients of its top-1 logit with respect to
the last convolutional block's activations (ResNet: ``layer4``), averaged over the positions, weight that
block's channels; their positive sum is the class activation map (CAM) over the centre crop the network saw.
The map is put back where that crop came from in the original photo and drawn as an RGBA PNG of the photo's
size: a colour map whose alpha grows with the heat, transparent outside the crop, to lay over the photo.

Only the activations require gradients (the backbone runs under ``no_grad``, the head from a detached copy
of its output): the parameters get no ``.grad`` and nothing of the model changes.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

# A heatmap PNG is the photo's size up to this many pixels on its longer side, else scaled down to it (same
# aspect ratio): a 7x7 map has no detail to lose, and a reply must stay under the 6 MB payload limits.
MAX_HEATMAP_SIDE = 1024
# Alpha at the hottest point: the photo stays visible under the colours.
MAX_ALPHA = 200
# A perceptually ordered colour map (dark blue -> cyan -> green -> yellow -> red), linearly interpolated.
_COLOUR_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([(48, 18, 59), (40, 150, 240), (40, 230, 160), (250, 190, 50), (190, 20, 5)], dtype=np.float64)


# ResNet halves the resolution five times, each time with a kernel centred on every second input pixel (stride
# 2, padding (k-1)/2), so the centre of the last block's cell c sits on input pixel 32*c, not in the middle of
# its 32-pixel span: drawn centred, the map would sit half a cell too far right and down.
RESNET_STRIDE = 32


class NotExplainable(Exception):
    """The network has no convolutional block this module knows how to explain."""


def crop_box(width: int, height: int, image_size: int, resize_size: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the original ``width`` x ``height`` photo of the square the eval transform
    keeps: the shorter side resized to ``resize_size`` (the longer one truncated to an integer, as torchvision's
    Resize does), then a centre crop of ``image_size`` (its offset rounded as CenterCrop rounds it)."""
    if width <= height:
        new_w, new_h = resize_size, int(resize_size * height / width)
    else:
        new_w, new_h = int(resize_size * width / height), resize_size
    left = int(round((new_w - image_size) / 2.0))
    top = int(round((new_h - image_size) / 2.0))
    sx, sy = new_w / width, new_h / height
    return left / sx, top / sy, (left + image_size) / sx, (top + image_size) / sy


def _stages(network):
    """(features, head) for a torchvision ResNet: features(x) is the output of ``layer4``, head(a) the logits."""
    stem = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if not all(hasattr(network, name) for name in stem + ("avgpool", "fc")):
        raise NotExplainable(f"{type(network).__name__} is not a ResNet with layer4, avgpool and fc")
    modules = [getattr(network, name) for name in stem]

    def features(x):
        for module in modules:
            x = module(x)
        return x

    def head(activations):
        return network.fc(torch.flatten(network.avgpool(activations), 1))

    return features, head


def class_activation_maps(network, batch: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of ``targets[i]`` for image ``batch[i]``: (N, h, w) float32 on the CPU, each map scaled from
    its minimum (0) to its maximum (1); all zeros when it is flat. ``batch``: the eval transform's output,
    (N, 3, S, S); ``targets``: N class indices. Works inside or outside ``inference_mode``."""
    features, head = _stages(network)
    device = next(network.parameters()).device
    with torch.inference_mode(False), torch.enable_grad():
        # Normal tensors, also when the caller made them in inference mode: autograd may save them.
        x, index = batch.to(device).clone(), targets.to(device).view(-1, 1).clone()
        with torch.no_grad():
            activations = features(x)
        activations = activations.detach().requires_grad_(True)
        logits = head(activations)
        score = logits.gather(1, index).sum()
        (gradients,) = torch.autograd.grad(score, activations)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cams = torch.relu((weights * activations).sum(dim=1)).detach()
    # Min-max scaled, as Grad-CAM is usually shown: the evidence the whole crop shares is not where it looked.
    low, high = cams.flatten(1).amin(dim=1).view(-1, 1, 1), cams.flatten(1).amax(dim=1).view(-1, 1, 1)
    return torch.where(high > low, (cams - low) / (high - low).clamp_min(1e-12), 0.0).cpu()


def _resample(cam: np.ndarray, out_w: int, out_h: int, crop: int, stride: float) -> np.ndarray:
    """Bilinear (edge values held) from cells whose centres sit on crop pixels ``stride * c`` to an ``out_w`` x
    ``out_h`` picture of the ``crop`` x ``crop`` square."""
    def cell_coordinates(n: int) -> np.ndarray:  # each output pixel's centre, in cells
        return ((np.arange(n) + 0.5) * crop / n - 0.5) / stride

    h, w = cam.shape
    rows = np.stack([np.interp(cell_coordinates(out_w), np.arange(w), row) for row in cam])
    return np.stack([np.interp(cell_coordinates(out_h), np.arange(h), column) for column in rows.T], axis=1)


def heatmap_image(cam: np.ndarray, width: int, height: int, box: tuple[float, float, float, float],
                  crop: int, stride: float = RESNET_STRIDE, max_side: int = MAX_HEATMAP_SIDE) -> Image.Image:
    """The CAM (h, w, values in [0, 1]) of a ``crop`` x ``crop`` square over ``box`` of a ``width`` x
    ``height`` photo, as an RGBA image of the photo's size (scaled to ``max_side`` on the longer side when
    bigger): colour map, alpha proportional to the heat (MAX_ALPHA at 1), transparent outside the box. Cell
    c's centre is on crop pixel ``stride * c``."""
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top, right, bottom = (round(v * scale) for v in box)
    left, top = max(0, left), max(0, top)
    right, bottom = min(out_w, max(right, left + 1)), min(out_h, max(bottom, top + 1))
    values = np.clip(_resample(np.asarray(cam, dtype=np.float64), right - left, bottom - top, crop, stride), 0, 1)
    rgba = np.zeros((out_h, out_w, 4), dtype=np.uint8)
    colours = np.stack([np.interp(values, _COLOUR_STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    rgba[top:bottom, left:right, :3] = np.round(colours).astype(np.uint8)
    rgba[top:bottom, left:right, 3] = np.round(values * MAX_ALPHA).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def explain(network, transform, images: list[Image.Image], targets: list[int], image_size: int,
            resize_size: int) -> list[dict]:
    """Per image, ``{"index", "heatmap": base64 PNG, "width", "height"}`` for class ``targets[i]``: Grad-CAM on
    ``network`` of ``transform(image)`` (the eval transform: resize to ``resize_size``, crop ``image_size``),
    drawn over the whole upright photo (``width``/``height``: its size; the PNG has that size up to
    MAX_HEATMAP_SIDE). Raises NotExplainable for a network that is not a ResNet."""
    batch = torch.stack([transform(img) for img in images])
    cams = class_activation_maps(network, batch, torch.tensor(targets, dtype=torch.long)).numpy()
    explanations = []
    for img, cam, target in zip(images, cams, targets):
        box = crop_box(img.width, img.height, image_size, resize_size)
        explanations.append({"index": int(target), "heatmap": png_base64(heatmap_image(cam, img.width, img.height, box, image_size)),
                             "width": img.width, "height": img.height})
    return explanations

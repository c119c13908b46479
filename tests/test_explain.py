"""Grad-CAM explanations (model_code/explain.py) through the handlers: ``explain=true`` as a Content-Type parameter
or ``"explain": true`` in the JSON adds, per image, an ``"explanation"`` whose heatmap PNG covers the original
photo where the network's centre crop came from."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from training_support import CORNER_CLASSES, corner_image, run_training, write_corner_dataset

from dogbreeds.serving import ModelServer
from model_code import explain
from model_code import inference as inf

CLASSES = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
IMAGE_SIZE = 64


def write_model_dir(path: Path) -> Path:
    """A random resnet18 with 3 classes at 64 px, as the training job writes it (code/ included)."""
    (path / "code").mkdir(parents=True)
    for name in ("inference.py", "explain.py"):
        shutil.copy2(Path(inf.__file__).with_name(name), path / "code" / name)
    torch.manual_seed(0)
    torch.save(inf.build_network("resnet18", len(CLASSES)).state_dict(), path / "model.pth")
    (path / "model.json").write_text(json.dumps({"arch": "resnet18", "image_size": IMAGE_SIZE, "classes": CLASSES}))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("explain") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return inf.model_fn(model_dir)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serve(model, body: bytes, content_type: str) -> dict:
    """input_fn -> predict_fn -> output_fn, the reply as a document."""
    reply, reply_type = inf.output_fn(inf.predict_fn(inf.input_fn(body, content_type), model), "application/json")
    assert reply_type == "application/json"
    return json.loads(reply)


def heatmap(explanation: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(explanation["heatmap"], validate=True)))


def opaque_box(img: Image.Image) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels with any alpha, right/bottom exclusive."""
    alpha = np.asarray(img)[..., 3]
    rows, columns = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


# ------------------------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("size", [(200, 100), (100, 200), (73, 73), (301, 97), (64, 640)])
def test_the_crop_box_is_where_the_eval_transforms_centre_crop_comes_from(size):
    """Oracle: torchvision's own Resize + CenterCrop (nearest, so values survive) of a photo whose pixels carry
    their column and row tell which original pixels the crop holds."""
    width, height = size
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    coded = torch.from_numpy(np.stack([columns, rows])).to(torch.int32)  # (2, H, W): column, row
    crop = T.Compose([T.Resize(inf.resize_size_for(IMAGE_SIZE), interpolation=T.InterpolationMode.NEAREST_EXACT),
                      T.CenterCrop(IMAGE_SIZE)])(coded)
    left, top, right, bottom = explain.crop_box(width, height, IMAGE_SIZE, inf.resize_size_for(IMAGE_SIZE))
    step_x, step_y = (right - left) / IMAGE_SIZE, (bottom - top) / IMAGE_SIZE
    # Each crop pixel's centre maps to the original pixel nearest-exact resizing took it from.
    assert crop[0, 0].tolist() == [int(left + (i + 0.5) * step_x) for i in range(IMAGE_SIZE)]
    assert crop[1, :, 0].tolist() == [int(top + (j + 0.5) * step_y) for j in range(IMAGE_SIZE)]


def test_a_heatmap_covers_the_photo_and_is_transparent_outside_the_crop():
    width, height = 300, 120
    box = explain.crop_box(width, height, IMAGE_SIZE, inf.resize_size_for(IMAGE_SIZE))
    img = explain.heatmap_image(np.ones((2, 2)), width, height, box, IMAGE_SIZE)
    assert (img.mode, img.size) == ("RGBA", (width, height))
    assert opaque_box(img) == tuple(round(v) for v in box)
    assert set(np.asarray(img)[..., 3][np.asarray(img)[..., 3] > 0].tolist()) == {explain.MAX_ALPHA}


def test_the_alpha_follows_the_heat():
    cam = np.array([[1.0, 0.0], [0.0, 0.5]])
    img = explain.heatmap_image(cam, 100, 100, (0, 0, 100, 100), crop=100, stride=50)  # centres on 0 and 50
    alpha = np.asarray(img)[..., 3].astype(int)
    assert alpha[0, 0] == explain.MAX_ALPHA and alpha[0, 99] == 0 and alpha[99, 0] == 0
    assert alpha[99, 99] == round(0.5 * explain.MAX_ALPHA)
    colours = np.asarray(img)[..., :3].astype(int)
    assert not np.array_equal(colours[0, 0], colours[99, 99])  # the colour map tells 1 from 0.5 too


def test_a_large_photos_heatmap_is_scaled_down_with_its_aspect_ratio():
    width, height = 4000, 1000
    box = explain.crop_box(width, height, IMAGE_SIZE, inf.resize_size_for(IMAGE_SIZE))
    img = explain.heatmap_image(np.ones((2, 2)), width, height, box, IMAGE_SIZE)
    scale = explain.MAX_HEATMAP_SIDE / width
    assert img.size == (explain.MAX_HEATMAP_SIDE, round(height * scale))
    assert opaque_box(img) == tuple(round(v * scale) for v in box)


# ------------------------------------------------------------------------------------------- handlers

def test_an_explanation_is_given_for_the_top_class_when_asked_and_only_then(model):
    photo = noise(150, 90, seed=1)
    plain = serve(model, encode(photo), "image/png")
    assert set(plain) == {"predictions"}
    assert serve(model, encode(photo), "image/png; explain=false") == plain

    doc = serve(model, encode(photo), "image/png; explain=true")
    assert doc["predictions"] == plain["predictions"]
    top = doc["predictions"][0]
    explanation = doc["explanation"]
    assert {k: explanation[k] for k in ("class", "label", "index", "width", "height")} == {
        "class": top["class"], "label": top["label"], "index": top["index"], "width": 150, "height": 90}
    img = heatmap(explanation)
    assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (150, 90))
    box = explain.crop_box(150, 90, IMAGE_SIZE, inf.resize_size_for(IMAGE_SIZE))
    left, top_, right, bottom = opaque_box(img)
    assert box[0] - 1 <= left and right <= box[2] + 1 and box[1] - 1 <= top_ and bottom <= box[3] + 1
    assert np.asarray(img)[..., 3].max() > 0


def test_json_requests_ask_with_an_explain_field_and_get_one_explanation_per_image(model):
    a, b = noise(80, 120, seed=2), noise(200, 64, seed=3)
    one = serve(model, json.dumps({"image": b64(encode(a)), "explain": True}).encode(), "application/json")
    assert one["explanation"]["class"] == one["predictions"][0]["class"]
    assert heatmap(one["explanation"]).size == (80, 120)

    doc = serve(model, json.dumps({"images": [b64(encode(a)), b64(encode(b, "JPEG"))], "explain": True,
                                   "top_k": 2}).encode(), "application/json")
    assert [heatmap(r["explanation"]).size for r in doc["results"]] == [(80, 120), (200, 64)]
    assert [r["explanation"]["class"] for r in doc["results"]] == [r["predictions"][0]["class"] for r in doc["results"]]
    assert [len(r["predictions"]) for r in doc["results"]] == [2, 2]
    # The field overrides the Content-Type parameter, as top_k's does.
    off = serve(model, json.dumps({"image": b64(encode(a)), "explain": False}).encode(), "application/json; explain=true")
    assert "explanation" not in off


BAD_EXPLAIN = {
    "content-type parameter": (lambda png: png, "image/png; explain=yes", "the Content-Type parameter explain"),
    "json string": (lambda png: json.dumps({"image": b64(png), "explain": "true"}).encode(), "application/json",
                    'JSON field "explain"'),
    "json number": (lambda png: json.dumps({"image": b64(png), "explain": 1}).encode(), "application/json",
                    'JSON field "explain"'),
}


@pytest.mark.parametrize("name", list(BAD_EXPLAIN))
def test_an_explain_value_that_is_not_true_or_false_is_a_400_saying_so(name):
    make, content_type, where = BAD_EXPLAIN[name]
    with pytest.raises(inf.ClientError) as refused:
        inf.input_fn(make(encode(noise(40, 40))), content_type)
    assert refused.value.status_code == 400
    assert refused.value.message.startswith(f"{where} must be true or false, got ")


def test_explaining_leaves_the_parameters_without_grads_and_unchanged(model):
    before = {name: p.detach().clone() for name, p in model.network.named_parameters()}
    buffers = {name: b.clone() for name, b in model.network.named_buffers()}
    serve(model, encode(noise(100, 100, seed=4)), "image/png; explain=true")
    with torch.inference_mode():  # as the local server's forward workers run: explaining still works there
        doc = serve(model, encode(noise(100, 100, seed=5)), "image/png; explain=true")
    assert np.asarray(heatmap(doc["explanation"]))[..., 3].max() > 0
    assert all(p.grad is None for p in model.network.parameters())
    assert all(torch.equal(p, before[name]) for name, p in model.network.named_parameters())
    assert all(torch.equal(b, buffers[name]) for name, b in model.network.named_buffers())
    assert not model.network.training


def test_the_local_server_explains_through_its_batched_forward(model_dir, model):
    photo = encode(noise(120, 90, seed=6))
    direct = serve(model, photo, "image/png; explain=true")
    with ModelServer(model_dir) as server:
        plain = server.invoke(photo, "image/png")
        explained = server.invoke(json.dumps({"images": [b64(photo)] * 2, "explain": True}).encode(),
                                  "application/json")
        asked_by_parameter = server.invoke(photo, "image/png; explain=true")
        bad = server.invoke(photo, "image/png; explain=maybe")
    assert (plain.status, explained.status, asked_by_parameter.status, bad.status) == (200, 200, 200, 400)
    assert "explanation" not in json.loads(plain.body)
    results = json.loads(explained.body)["results"]
    assert [r["explanation"]["class"] for r in results] == [direct["explanation"]["class"]] * 2
    alpha = np.asarray(heatmap(json.loads(asked_by_parameter.body)["explanation"]))[..., 3].astype(int)
    assert np.abs(alpha - np.asarray(heatmap(direct["explanation"]))[..., 3].astype(int)).max() <= 1
    assert json.loads(bad.body)["message"] == "the Content-Type parameter explain must be true or false, got 'maybe'"


# ------------------------------------------------------------------------------------------- the heat

@pytest.fixture(scope="module")
def corner_model(tmp_path_factory):
    """A resnet18 trained from scratch on CORNER_CLASSES, the squares anywhere: only their colour tells the class
    (trained on squares in their corners, the net also reads the corner from afar and its heat spreads)."""
    root = tmp_path_factory.mktemp("corners")
    data = write_corner_dataset(root / "data", {"train": 36, "valid": 8, "test": 8}, size=CORNER_PHOTO,
                                anywhere=True)
    run_training(data, root, "--finetune=full", "--augment=none", f"--image-size={CORNER_IMAGE_SIZE}",
                 "--epochs=5", "--batch-size=16", "--lr=0.003", "--early-stopping-patience=0")
    return inf.model_fn(root / "model")


# 160 px: a 5x5 map (at 64 px every cell of the 2x2 map sees the whole crop, and the heat is everywhere).
CORNER_PHOTO, CORNER_IMAGE_SIZE = 180, 160


@pytest.mark.parametrize("name", [name for name, signal in CORNER_CLASSES.items() if signal is not None])
def test_most_of_the_heat_is_in_the_corner_that_holds_the_class_signal(corner_model, name):
    """Photos of the class with its square in its corner: over half of the heatmap's alpha (which is
    proportional to the map) lies in that quadrant of the photo."""
    (column, row), _ = CORNER_CLASSES[name]
    rng = np.random.default_rng(123)
    for _ in range(4):
        doc = serve(corner_model, encode(corner_image(CORNER_CLASSES[name], CORNER_PHOTO, rng)), "image/png; explain=true")
        assert doc["explanation"]["class"] == name == doc["predictions"][0]["class"]
        alpha = np.asarray(heatmap(doc["explanation"]))[..., 3].astype(np.float64)
        half_h, half_w = alpha.shape[0] // 2, alpha.shape[1] // 2
        quadrant = alpha[row * half_h:(row + 1) * half_h, column * half_w:(column + 1) * half_w]
        assert quadrant.sum() > 0.5 * alpha.sum()

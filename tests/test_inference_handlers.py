"""The SageMaker handlers in model_code/inference.py (DESIGN.md, Contract 2).

The test network is a real resnet18 whose head has zero weights and a chosen bias, so every image gets
exactly softmax(BIAS): probabilities, order and top-k are known whatever the image decodes to.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import importlib
import inspect
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from model_code import inference as inf
from training import data as training_data

CLASSES = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
LABELS = ["Affenpinscher", "Afghan_hound", "Airedale_terrier"]
BIAS = [0.0, 2.0, 1.0]
_EXP = [math.exp(b) for b in BIAS]
EXPECTED = [e / sum(_EXP) for e in _EXP]  # 0.0900306, 0.6652410, 0.2447285
RANKED = [1, 2, 0]
IMAGE_SIZE = 32  # small input keeps the CPU forward passes fast; ResNets pool adaptively


# ----------------------------------------------------------------------------------------- helpers

def write_model_dir(path: Path, zero_backbone: bool = False) -> Path:
    """model.pth (resnet18, fc weight 0, fc bias BIAS) and model.json, as the training job writes them.
    ``zero_backbone`` zeroes the conv weights too (same outputs, and the file gzips to almost nothing)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = inf.build_network("resnet18", len(CLASSES))
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor(BIAS))
        for module in net.modules() if zero_backbone else ():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
    torch.save(net.state_dict(), path / "model.pth")
    meta = {"format_version": 1, "arch": "resnet18", "image_size": IMAGE_SIZE,
            "classes": CLASSES, "labels": LABELS,
            "normalization": {"mean": list(inf.IMAGENET_MEAN), "std": list(inf.IMAGENET_STD)},
            "hyperparameters": {}, "metrics": {}, "dataset": {}, "versions": {}}
    (path / "model.json").write_text(json.dumps(meta))
    return path


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def halves(width: int, height: int, left, right, mode: str = "RGB") -> Image.Image:
    img = Image.new(mode, (width, height), left)
    img.paste(Image.new(mode, (width - width // 2, height), right), (width // 2, 0))
    return img


def serve(model, body, content_type, accept="application/json"):
    """input_fn -> predict_fn -> output_fn, as the toolkit chains them; returns (parsed JSON, type)."""
    text, reply_type = inf.output_fn(inf.predict_fn(inf.input_fn(body, content_type), model), accept)
    return json.loads(text), reply_type


def assert_ranked(predictions, k: int = 3):
    assert [p["index"] for p in predictions] == RANKED[:k]
    assert [p["class"] for p in predictions] == [CLASSES[i] for i in RANKED[:k]]
    assert [p["label"] for p in predictions] == [LABELS[i] for i in RANKED[:k]]
    assert [p["probability"] for p in predictions] == pytest.approx([EXPECTED[i] for i in RANKED[:k]], abs=1e-5)


def client_error(call, *args):
    with pytest.raises(inf.ClientError) as info:
        call(*args)
    return info.value


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny forward passes: one thread avoids OpenMP spin-waiting on a busy CI box; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir):
    return inf.model_fn(model_dir)


@pytest.fixture(scope="module")
def huge_png():
    """8000x6000 = 48 MP of one grey: a 60 kB file over the 40 MP default limit."""
    return encode(Image.new("L", (8000, 6000), 128), "PNG")


# ----------------------------------------------------------------------------------------- model_fn

def test_model_fn_loads_what_serving_needs(model):
    assert isinstance(model, inf.LoadedModel)
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not model.network.training
    assert model.classes == CLASSES and model.labels == LABELS and model.image_size == IMAGE_SIZE
    batch = model.preprocess([noise(50, 40), Image.new("RGB", (300, 90), "white")])
    assert batch.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.dtype == torch.float32
    # white after ImageNet normalisation: (1 - mean) / std per channel
    white = torch.tensor([(1 - m) / s for m, s in zip(inf.IMAGENET_MEAN, inf.IMAGENET_STD)])
    assert torch.allclose(batch[1, :, 10, 10], white, atol=1e-4)
    probs = model.probabilities(batch)
    assert probs.shape == (2, 3) and probs.device.type == "cpu" and probs.dtype == torch.float32
    assert probs.tolist()[0] == pytest.approx(EXPECTED, abs=1e-6)
    assert probs.tolist()[1] == pytest.approx(EXPECTED, abs=1e-6)


def test_model_fn_names_a_missing_model_pth(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(inf.ModelLoadError, match=r"model\.pth not found in .*found: \['model\.json'\]"):
        inf.model_fn(tmp_path)


def test_model_fn_names_a_missing_model_json(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(inf.ModelLoadError, match=r"model\.json not found"):
        inf.model_fn(tmp_path)


def test_model_fn_explains_a_state_dict_that_does_not_fit(tmp_path, model_dir):
    """model.json lists 4 classes, model.pth has a 3-output head."""
    (tmp_path / "model.pth").write_bytes((model_dir / "model.pth").read_bytes())
    meta = json.loads((model_dir / "model.json").read_text())
    meta["classes"].append("004.Akita")
    meta["labels"].append("Akita")
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(inf.ModelLoadError) as info:
        inf.model_fn(tmp_path)
    message = str(info.value)
    assert "model.pth does not fit resnet18 with 4 classes" in message
    assert "size mismatch for fc.weight" in message


@pytest.mark.parametrize("folder, label", [
    ("001.Affenpinscher", "Affenpinscher"),
    ("133.Yorkshire_terrier", "Yorkshire_terrier"),
    ("7.St.Bernard", "St.Bernard"),                 # only the numeric prefix goes
    ("Affenpinscher", "Affenpinscher"),             # no prefix: the name as it is
    ("001_Affenpinscher", "001_Affenpinscher"),     # Contract 1's prefix ends with a dot
    ("A1.Akita", "A1.Akita"),
])
def test_display_label_is_the_class_folder_without_its_numeric_prefix(folder, label):
    assert inf.display_label(folder) == label
    assert training_data.display_label is inf.display_label       # training labels by the same rule


def test_model_fn_labels_classes_by_the_folder_rule_when_model_json_has_no_labels(tmp_path, model_dir):
    (tmp_path / "model.pth").write_bytes((model_dir / "model.pth").read_bytes())
    meta = json.loads((model_dir / "model.json").read_text())
    del meta["labels"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert inf.model_fn(tmp_path).labels == LABELS


def test_model_fn_rejects_a_bad_model_json(tmp_path, model_dir):
    (tmp_path / "model.pth").write_bytes(b"")
    (tmp_path / "model.json").write_text(json.dumps({"arch": "vgg16", "classes": CLASSES}))
    with pytest.raises(inf.ModelLoadError, match=r"model\.json: arch 'vgg16' is not one of resnet18"):
        inf.model_fn(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(inf.ModelLoadError, match=r"model\.json: not readable JSON"):
        inf.model_fn(tmp_path)


# ------------------------------------------------------------------------------ predictions, top-k

def test_prediction_is_softmax_of_the_bias_sorted_with_default_top_k_clamped(model):
    reply, reply_type = serve(model, encode(noise(80, 60), "JPEG"), "image/jpeg")
    assert reply_type == "application/json"
    assert list(reply) == ["predictions"]
    assert len(reply["predictions"]) == 3  # default 5, only 3 classes
    assert_ranked(reply["predictions"])
    assert set(reply["predictions"][0]) == {"label", "class", "index", "probability"}
    assert reply["predictions"][0]["label"] == "Afghan_hound"
    assert reply["predictions"][0]["probability"] == pytest.approx(0.665241, abs=1e-5)


@pytest.mark.parametrize("body_top_k, content_type, accept, expected_k", [
    (1, "application/json", "application/json", 1),                # JSON field
    (None, "application/json; top_k=2", "application/json", 2),    # Content-Type parameter
    (None, "application/json", "application/json; top_k=1", 1),    # Accept parameter
    (2, "application/json; top_k=1", "application/json; top_k=1", 2),  # the JSON field wins
    (0, "application/json", None, 1),                              # clamped up to 1
    (500, "application/json", None, 3),                            # clamped down to the classes
])
def test_top_k_from_the_request_or_the_media_types(model, body_top_k, content_type, accept, expected_k):
    doc = {"image": b64(encode(noise(40, 40), "PNG"))}
    if body_top_k is not None:
        doc["top_k"] = body_top_k
    reply, _ = serve(model, json.dumps(doc), content_type, accept)
    assert len(reply["predictions"]) == expected_k
    assert_ranked(reply["predictions"], expected_k)


def test_top_k_parameter_on_an_image_content_type(model):
    reply, _ = serve(model, encode(noise(40, 40), "JPEG"), "image/jpeg; top_k=1", "*/*")
    assert len(reply["predictions"]) == 1
    assert_ranked(reply["predictions"], 1)


@pytest.mark.parametrize("accept", [None, "", "*/*", "application/json", "Application/JSON; charset=utf-8",
                                    "text/html, application/*;q=0.5", "text/csv;q=0.9, application/json"])
def test_output_fn_accepts_json_compatible_accept_values(model, accept):
    result = inf.predict_fn(inf.input_fn(encode(noise(40, 40), "PNG"), "image/png"), model)
    body, reply_type = inf.output_fn(result, accept)
    assert reply_type == "application/json"
    assert_ranked(json.loads(body)["predictions"])


def test_ties_keep_class_order():
    result = inf.InferenceResult(torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]), CLASSES, LABELS)
    assert [[p["index"] for p in row] for row in result.ranked(3)] == [[1, 0, 2], [2, 0, 1]]
    assert [len(row) for row in result.ranked(None)] == [3, 3]


# ------------------------------------------------------------------------------------ good inputs

def _rgba_left_transparent():
    img = halves(40, 20, (0, 0, 0, 0), (0, 0, 255, 255), "RGBA")
    return encode(img, "PNG"), "image/png", [((5, 10), (255, 255, 255)), ((35, 10), (0, 0, 255))]


def _palette_with_transparency():
    img = Image.new("P", (40, 20), 0)
    img.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)  # index 0 green (transparent), 1 red
    img.paste(1, (20, 0, 40, 20))
    return encode(img, "PNG", transparency=0), "image/png", [((5, 10), (255, 255, 255)), ((35, 10), (255, 0, 0))]


def _exif_rotated_jpeg(orientation):
    """Stored 40x20, left half red, right half blue; EXIF says how to turn it upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(halves(40, 20, (255, 0, 0), (0, 0, 255)), "JPEG", exif=exif.tobytes(), quality=95)
    # 6: rotate 90 clockwise -> the stored left edge is the top; 8: counter-clockwise -> it is the bottom
    top, bottom = ((255, 0, 0), (0, 0, 255)) if orientation == 6 else ((0, 0, 255), (255, 0, 0))
    return data, "image/jpeg", [((10, 5), top), ((10, 35), bottom)]


GOOD_INPUTS = {
    "jpeg": lambda: (encode(Image.new("RGB", (40, 30), (200, 30, 30)), "JPEG"), "image/jpeg",
                     [((20, 15), (200, 30, 30))]),
    "png-rgb": lambda: (encode(halves(40, 20, (10, 20, 30), (40, 50, 60)), "PNG"), "image/png",
                        [((5, 5), (10, 20, 30)), ((35, 5), (40, 50, 60))]),
    "png-rgba": _rgba_left_transparent,
    "png-palette-transparency": _palette_with_transparency,
    "png-16bit-grey": lambda: (encode(Image.fromarray(np.full((20, 30), 32768, np.uint16)), "PNG"), "image/png",
                               [((15, 10), (128, 128, 128))]),
    "png-8bit-grey": lambda: (encode(Image.new("L", (30, 20), 77), "PNG"), "image/png", [((15, 10), (77, 77, 77))]),
    "jpeg-cmyk": lambda: (encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), "image/jpeg",
                          [((16, 16), (255, 0, 0))]),
    "jpeg-exif-orientation-6": lambda: _exif_rotated_jpeg(6),
    "jpeg-exif-orientation-8": lambda: _exif_rotated_jpeg(8),
    "octet-stream-png": lambda: (encode(Image.new("RGB", (30, 20), (1, 2, 3)), "PNG"), "application/octet-stream",
                                 [((3, 3), (1, 2, 3))]),
    "x-image-jpeg-with-parameters": lambda: (encode(Image.new("RGB", (30, 20), (0, 128, 0)), "JPEG"),
                                             "Application/X-Image; charset=binary", [((15, 10), (0, 128, 0))]),
    "png-sent-as-image-jpeg": lambda: (encode(Image.new("RGB", (30, 20), (9, 8, 7)), "PNG"), "image/jpeg",
                                       [((3, 3), (9, 8, 7))]),
    "bytearray-body": lambda: (bytearray(encode(Image.new("RGB", (30, 20), (5, 6, 7)), "PNG")), "image/png",
                               [((3, 3), (5, 6, 7))]),
    "json-single": lambda: (json.dumps({"image": b64(encode(Image.new("RGB", (30, 20), (70, 80, 90)), "PNG"))}),
                            "application/json", [((3, 3), (70, 80, 90))]),
    "json-bytes-data-url-wrapped": lambda: (
        json.dumps({"image": "data:image/png;base64," + base64.encodebytes(
            encode(Image.new("RGB", (30, 20), (11, 22, 33)), "PNG")).decode()}).encode(),
        "application/json; charset=utf-8", [((3, 3), (11, 22, 33))]),
    "json-urlsafe-unpadded": lambda: (
        json.dumps({"image": base64.urlsafe_b64encode(encode(noise(31, 17), "PNG")).decode().rstrip("=")}),
        "application/json", [((0, 0), tuple(int(v) for v in np.asarray(noise(31, 17))[0, 0]))]),
}


@pytest.mark.parametrize("name", list(GOOD_INPUTS))
def test_good_input_is_decoded_upright_rgb_and_predicted(model, name):
    body, content_type, pixels = GOOD_INPUTS[name]()
    request = inf.input_fn(body, content_type)
    assert isinstance(request, inf.InferenceRequest)
    assert len(request.images) == 1 and request.is_list is False and request.top_k is None
    img = request.images[0]
    assert img.mode == "RGB"
    lossy = "jpeg" in name or "x-image" in name
    for xy, colour in pixels:
        assert img.getpixel(xy) == pytest.approx(colour, abs=12 if lossy else 1), (name, xy)
    text, reply_type = inf.output_fn(inf.predict_fn(request, model), "application/json")
    assert reply_type == "application/json"
    assert_ranked(json.loads(text)["predictions"])


def test_exif_rotation_changes_the_size():
    data, content_type, _ = _exif_rotated_jpeg(6)
    assert inf.input_fn(data, content_type).images[0].size == (20, 40)


def test_open_image_composites_transparency_on_white():
    """The shared decoder directly: half-transparent red over white is pink, not dark red."""
    img = inf.open_image(encode(halves(20, 10, (255, 0, 0, 128), (0, 0, 0, 0), "RGBA"), "PNG"))
    assert img.getpixel((2, 2)) == pytest.approx((255, 127, 127), abs=1)
    assert img.getpixel((18, 2)) == (255, 255, 255)


def test_json_list_is_one_forward_pass_and_keeps_order(model):
    calls = []
    hook = model.network.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    try:
        sizes = [(40, 30), (25, 50), (64, 64)]
        doc = {"images": [b64(encode(noise(w, h, seed=i), "JPEG")) for i, (w, h) in enumerate(sizes)], "top_k": 2}
        request = inf.input_fn(json.dumps(doc), "application/json")
        assert request.is_list and request.top_k == 2
        assert [img.size for img in request.images] == sizes
        body, _ = inf.output_fn(inf.predict_fn(request, model), "application/json")
    finally:
        hook.remove()
    assert calls == [(3, 3, IMAGE_SIZE, IMAGE_SIZE)]
    reply = json.loads(body)
    assert list(reply) == ["results"] and len(reply["results"]) == 3
    for entry in reply["results"]:
        assert list(entry) == ["predictions"]
        assert_ranked(entry["predictions"], 2)


class MeanColour(nn.Module):
    """Logits = 10 x the mean of each normalised channel: red images -> class 0, green -> 1, blue -> 2."""

    def forward(self, x):
        return 10 * x.mean(dim=(2, 3))


def test_list_results_follow_input_order(model):
    colour_model = dataclasses.replace(model, network=MeanColour())
    colours = ["blue", "red", "green", "blue"]
    doc = {"images": [b64(encode(Image.new("RGB", (20, 20), c), "PNG")) for c in colours]}
    reply, _ = serve(colour_model, json.dumps(doc), "application/json")
    top = [entry["predictions"][0]["label"] for entry in reply["results"]]
    assert top == ["Airedale_terrier", "Affenpinscher", "Afghan_hound", "Airedale_terrier"]


# ------------------------------------------------------------------------------------- bad inputs

def _truncated(fmt: str) -> bytes:
    data = encode(noise(64, 64), fmt)
    return data[: len(data) * 2 // 3]


BAD_INPUTS = {
    "empty-image-body": (b"", "image/jpeg", 400, "empty body"),
    "empty-json-body": ("", "application/json", 400, "empty body"),
    "random-bytes": (np.random.default_rng(1).bytes(3000), "application/octet-stream", 400, "not an image"),
    "text-as-jpeg": (b"Dear customer,\nplease find my dog attached.\n", "image/jpeg", 400, "not an image"),
    "eps-never-reaches-ghostscript": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
                                      "application/octet-stream", 400, "not JPEG, PNG, WebP, GIF, BMP or TIFF"),
    "truncated-jpeg": (_truncated("JPEG"), "image/jpeg", 400, "corrupt or truncated"),
    "truncated-png": (_truncated("PNG"), "image/png", 400, "corrupt or truncated"),
    "text-plain": (b"hello", "text/plain", 415, "unsupported Content-Type 'text/plain': send one of image/jpeg, "
                                                "image/png, application/x-image, application/octet-stream, "
                                                "application/json"),
    "no-subtype": (b"\xff\xd8", "image", 415, "unsupported Content-Type"),
    "malformed-json": ('{"image": "abc"', "application/json", 400, "invalid JSON: Expecting"),
    "json-not-utf8": (b'{"image": "\xff"}', "application/json; charset=latin-1", 400, "not UTF-8"),
    "json-nested-too-deep": ("[" * 100_000, "application/json", 400, "invalid JSON: maximum recursion depth"),
    "json-number-too-long": ('{"image": "aGVsbG8=", "top_k": ' + "9" * 5000 + "}", "application/json", 400,
                             "invalid JSON: Exceeds the limit"),
    "json-array": ('["aGVsbG8="]', "application/json", 400, "JSON body is an array, not an object"),
    "json-without-image": ('{"picture": "aGVsbG8="}', "application/json", 400, 'has no "image" and "images" fields'),
    "json-with-both": ('{"image": "aGVsbG8=", "images": []}', "application/json", 400, 'has both "image" and "images"'),
    "json-image-null": ('{"image": null}', "application/json", 400, "image must be a base64 string, got null"),
    "bad-base64-in-images-1": (json.dumps({"images": [b64(encode(noise(8, 8), "PNG")), "!!not base64!!"]}),
                               "application/json", 400, "images[1] is not valid base64"),
    "number-in-images-1": (json.dumps({"images": [b64(encode(noise(8, 8), "PNG")), 42]}), "application/json", 400,
                           "images[1] must be a base64 string, got a number"),
    "text-in-images-2": (json.dumps({"images": [b64(encode(noise(8, 8), "PNG"))] * 2 + [b64(b"just text")]}),
                         "application/json", 400, "images[2]: not an image"),
    "empty-string-image": ('{"image": ""}', "application/json", 400, "image is empty"),
    "data-url-not-base64": ('{"image": "data:image/png,abc"}', "application/json", 400, "without ';base64,'"),
    "images-not-a-list": ('{"images": "aGVsbG8="}', "application/json", 400, '"images" must be a list'),
    "empty-images-list": ('{"images": []}', "application/json", 400, '"images" is an empty list'),
    "too-many-images": (json.dumps({"images": ["aGVsbG8="] * 65}), "application/json", 413,
                        "65 images in one request, over the limit of 64"),
    "top-k-string": ('{"image": "aGVsbG8=", "top_k": "three"}', "application/json", 400,
                     "JSON field \"top_k\" must be a non-negative integer, got 'three'"),
    "top-k-float": ('{"image": "aGVsbG8=", "top_k": 2.5}', "application/json", 400, "must be a non-negative integer"),
    "top-k-negative": ('{"image": "aGVsbG8=", "top_k": -1}', "application/json", 400, "got -1"),
    "top-k-bool": ('{"image": "aGVsbG8=", "top_k": true}', "application/json", 400, "got True"),
    "top-k-parameter": (b"\xff\xd8", "image/jpeg; top_k=all", 400,
                        "the Content-Type parameter top_k must be a non-negative integer, got 'all'"),
    "top-k-parameter-over-the-int-digit-limit": (b"\xff\xd8", "image/jpeg; top_k=" + "9" * 5000, 400,
                                                 "the Content-Type parameter top_k must be a non-negative integer"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_a_client_error_that_says_why(name):
    body, content_type, status, phrase = BAD_INPUTS[name]
    error = client_error(inf.input_fn, body, content_type)
    assert error.status_code == status
    assert phrase in error.message
    assert str(error) == error.message and "\n" not in error.message  # the toolkit sends it as the reason phrase


def test_body_over_the_limit_is_413_with_the_limit(monkeypatch):
    error = client_error(inf.input_fn, b"\0" * (inf.MAX_BODY_BYTES + 1), "image/jpeg")
    assert error.status_code == 413
    assert f"over the limit of {inf.MAX_BODY_BYTES:,} bytes" in error.message
    if "DOGBREEDS_MAX_BODY_BYTES" not in os.environ:
        assert "over the limit of 6,291,456 bytes (6 MiB)" in error.message
    monkeypatch.setattr(inf, "MAX_BODY_BYTES", 1000)
    error = client_error(inf.input_fn, json.dumps({"image": "A" * 2000}), "application/json")
    assert (error.status_code, error.message) == (413, "request body is 2,013 bytes, over the limit of "
                                                       "1,000 bytes (0.000953674 MiB)")


def test_image_over_max_pixels_is_413(huge_png):
    error = client_error(inf.input_fn, huge_png, "image/png")
    assert error.status_code == 413
    assert f"8000x6000 = 48,000,000 pixels, over the limit of {inf.MAX_PIXELS:,} pixels" in error.message
    doc = {"images": [b64(encode(noise(8, 8), "PNG")), b64(huge_png)]}
    error = client_error(inf.input_fn, json.dumps(doc), "application/json")
    assert error.status_code == 413 and error.message.startswith("images[1]: image is 8000x6000")


def test_pixel_limit_is_read_at_call_time(monkeypatch):
    monkeypatch.setattr(inf, "MAX_PIXELS", 100)
    error = client_error(inf.input_fn, encode(noise(20, 10), "PNG"), "image/png")
    assert error.status_code == 413 and "20x10 = 200 pixels, over the limit of 100 pixels" in error.message


def test_pixels_of_a_whole_list_are_limited(monkeypatch):
    monkeypatch.setattr(inf, "MAX_REQUEST_PIXELS", 1000)
    doc = {"images": [b64(encode(noise(20, 20), "PNG"))] * 3}  # 400 + 400 + 400 pixels
    error = client_error(inf.input_fn, json.dumps(doc), "application/json")
    assert error.status_code == 413 and "images[0..2] hold 1,200 pixels together" in error.message


@pytest.mark.parametrize("accept", ["text/csv", "image/png", "application/json;q=0", "text/html, text/plain"])
def test_unsupported_accept_is_406(model, accept):
    result = inf.predict_fn(inf.input_fn(encode(noise(20, 20), "PNG"), "image/png"), model)
    error = client_error(inf.output_fn, result, accept)
    assert error.status_code == 406
    assert f"cannot reply as Accept {accept!r}: replies are application/json" in error.message


def test_accept_top_k_parameter_must_be_a_number(model):
    result = inf.predict_fn(inf.input_fn(encode(noise(20, 20), "PNG"), "image/png"), model)
    error = client_error(inf.output_fn, result, "application/json; top_k=-2")
    assert error.status_code == 400 and "the Accept parameter top_k must be a non-negative integer" in error.message


# ------------------------------------------------------------------------ the packaged artifact

def test_handlers_have_the_parameter_counts_the_toolkit_dispatches_on():
    """The toolkit passes an extra context argument to a handler with one parameter more."""
    counts = {name: len(inspect.signature(getattr(inf, name)).parameters)
              for name in ("model_fn", "input_fn", "predict_fn", "output_fn")}
    assert counts == {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2}
    assert not hasattr(inf, "transform_fn")  # the toolkit refuses transform_fn next to the other three


@pytest.mark.parametrize("name", ["inference.py", "explain.py"])
def test_inference_py_imports_only_what_the_container_has(name):
    tree = ast.parse(Path(inf.__file__).with_name(name).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
    third_party = roots - set(sys.stdlib_module_names)
    assert third_party <= {"torch", "torchvision", "numpy", "PIL", "sagemaker_inference"}, third_party


def test_model_tar_gz_round_trip_serves_from_the_extracted_code(tmp_path):
    staged = write_model_dir(tmp_path / "staged", zero_backbone=True)
    (staged / "code").mkdir()
    (staged / "code" / "inference.py").write_bytes(Path(inf.__file__).read_bytes())
    subprocess.run(["tar", "czf", str(tmp_path / "model.tar.gz"), "-C", str(staged), "."], check=True)

    extracted = tmp_path / "opt_ml_model"
    extracted.mkdir()
    subprocess.run(["tar", "xzf", str(tmp_path / "model.tar.gz"), "-C", str(extracted)], check=True)
    assert sorted(p.relative_to(extracted).as_posix() for p in extracted.rglob("*") if p.is_file()) == \
        ["code/inference.py", "model.json", "model.pth"]

    # As the container does: code/ on sys.path, then `import inference`.
    sys.path.insert(0, str(extracted / "code"))
    saved = sys.modules.pop("inference", None)
    try:
        module = importlib.import_module("inference")
        assert Path(module.__file__).resolve() == (extracted / "code" / "inference.py").resolve()
        assert module is not inf and module.ClientError is not inf.ClientError
        loaded = module.model_fn(str(extracted))
        request = module.input_fn(encode(noise(50, 40), "JPEG"), "image/jpeg")
        body, reply_type = module.output_fn(module.predict_fn(request, loaded), "*/*")
        with pytest.raises(module.ClientError) as info:
            module.input_fn(b"", "image/png")
        assert info.value.status_code == 400
    finally:
        sys.path.remove(str(extracted / "code"))
        sys.modules.pop("inference", None)
        if saved is not None:
            sys.modules["inference"] = saved
    assert reply_type == "application/json"
    assert_ranked(json.loads(body)["predictions"])

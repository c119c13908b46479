"""Serve a trained model directory once, as the SageMaker PyTorch inference container would, and write what
it answered: run as a script by tests/test_cross_torch.py under either venv (ours or .venv-containers).

    python tests/cross_torch_serve.py MODEL_DIR OUT.json IMAGE...

The handlers are loaded from MODEL_DIR/code/inference.py (the artifact's copy, as the toolkit loads them) and
each image goes through model_fn, input_fn (image/jpeg), predict_fn and output_fn (every class ranked).
OUT.json: {"python", "torch", "torchvision": the versions that served, "variant": the serving variant
model_fn chose (DOGBREEDS_INFERENCE_VARIANT forces one), "predictions": per image, the
output_fn body's predictions, most probable first}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

import torch
import torchvision

EVERY_CLASS = "application/json; top_k=1000"  # output_fn clamps top_k to the number of classes


def load_handlers(code_dir: Path):
    """The artifact's inference.py as a module, loaded from its file like the inference toolkit does."""
    spec = importlib.util.spec_from_file_location("served_inference", code_dir / "inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as a normal import would (its dataclasses look themselves up there)
    spec.loader.exec_module(module)
    return module


def serve(model_dir: Path, images: list[Path]) -> tuple[str, list[list[dict]]]:
    """The serving variant model_fn chose, and per image the ranked predictions output_fn returns for it."""
    handlers = load_handlers(model_dir / "code")
    model = handlers.model_fn(str(model_dir))
    answers = []
    for image in images:
        request = handlers.input_fn(image.read_bytes(), "image/jpeg")
        body, _content_type = handlers.output_fn(handlers.predict_fn(request, model), EVERY_CLASS)
        answers.append(json.loads(body)["predictions"])
    return model.variant, answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    variant, predictions = serve(args.model_dir, args.images)
    record = {"python": platform.python_version(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "variant": variant, "predictions": predictions}
    args.out.write_text(json.dumps(record))


if __name__ == "__main__":
    main()

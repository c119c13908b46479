"""Synthetic labelled JPEGs in the layout of the Udacity dog-breed set, for tests, demos and benchmarks.

``generate_dataset(root)`` writes ``<root>/{train,valid,test}/<NNN.Breed_name>/<image>.jpg``. Each class is
its own combination of a shape, a hue family and a surface texture (11 x 3 x 5 pairwise-coprime cycles, so
the first 165 classes are all different). Hue families are shared between classes, so mean colour alone
cannot tell them apart. Every image varies the object's position, scale, rotation and colour, the
background, the pixel noise, the JPEG quality and the image's size and aspect ratio.

Each image comes from its own random stream seeded by (seed, split, class, index): the same arguments give
byte-identical files (with the same Pillow/libjpeg), and changing one split's count leaves every other image
as it was.

CLI: ``python -m dogbreeds.synthetic OUT_DIR --classes 5 --train 40 --valid 10 --test 10 --seed 0``
"""

from __future__ import annotations

import argparse
import colorsys
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

# The Udacity dogImages class folders, in their (alphabetical) order.
BREEDS = """
Affenpinscher Afghan_hound Airedale_terrier Akita Alaskan_malamute American_eskimo_dog American_foxhound
American_staffordshire_terrier American_water_spaniel Anatolian_shepherd_dog Australian_cattle_dog
Australian_shepherd Australian_terrier Basenji Basset_hound Beagle Bearded_collie Beauceron
Bedlington_terrier Belgian_malinois Belgian_sheepdog Belgian_tervuren Bernese_mountain_dog Bichon_frise
Black_and_tan_coonhound Black_russian_terrier Bloodhound Bluetick_coonhound Border_collie Border_terrier
Borzoi Boston_terrier Bouvier_des_flandres Boxer Boykin_spaniel Briard Brittany Brussels_griffon
Bull_terrier Bulldog Bullmastiff Cairn_terrier Canaan_dog Cane_corso Cardigan_welsh_corgi
Cavalier_king_charles_spaniel Chesapeake_bay_retriever Chihuahua Chinese_crested Chinese_shar-pei
Chow_chow Clumber_spaniel Cocker_spaniel Collie Curly-coated_retriever Dachshund Dalmatian
Dandie_dinmont_terrier Doberman_pinscher Dogue_de_bordeaux English_cocker_spaniel English_setter
English_springer_spaniel English_toy_spaniel Entlebucher_mountain_dog Field_spaniel Finnish_spitz
Flat-coated_retriever French_bulldog German_pinscher German_shepherd_dog German_shorthaired_pointer
German_wirehaired_pointer Giant_schnauzer Glen_of_imaal_terrier Golden_retriever Gordon_setter Great_dane
Great_pyrenees Greater_swiss_mountain_dog Greyhound Havanese Ibizan_hound Icelandic_sheepdog
Irish_red_and_white_setter Irish_setter Irish_terrier Irish_water_spaniel Irish_wolfhound Italian_greyhound
Japanese_chin Keeshond Kerry_blue_terrier Komondor Kuvasz Labrador_retriever Lakeland_terrier Leonberger
Lhasa_apso Lowchen Maltese Manchester_terrier Mastiff Miniature_schnauzer Neapolitan_mastiff Newfoundland
Norfolk_terrier Norwegian_buhund Norwegian_elkhound Norwegian_lundehund Norwich_terrier
Nova_scotia_duck_tolling_retriever Old_english_sheepdog Otterhound Papillon Parson_russell_terrier
Pekingese Pembroke_welsh_corgi Petit_basset_griffon_vendeen Pharaoh_hound Plott Pointer Pomeranian Poodle
Portuguese_water_dog Saint_bernard Silky_terrier Smooth_fox_terrier Tibetan_mastiff Welsh_springer_spaniel
Wirehaired_pointing_griffon Xoloitzcuintli Yorkshire_terrier
""".split()

SPLITS = ("train", "valid", "test")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon", "crescent",
          "arrow", "hourglass")
HUE_FAMILIES = (0.0, 1 / 3, 2 / 3)  # red, green, blue
TEXTURES = ("solid", "stripes", "checker", "dots", "target")
MAX_CLASSES = len(SHAPES) * len(HUE_FAMILIES) * len(TEXTURES)
# Objects stay inside this centred square (fraction of the shorter side), so resize + centre crop keeps them.
SAFE_FRACTION = 0.85


def breed_folder_names(num_classes: int) -> list[str]:
    """Class folder names for ``num_classes`` classes (1..999): ``["001.Affenpinscher", ...]``.

    The first 133 are the real Udacity breed names in order; later ones are ``"NNN.Breed_NNN"``.
    """
    if not 1 <= num_classes <= 999:
        raise ValueError(f"num_classes must be between 1 and 999, got {num_classes}")
    return [f"{i:03d}.{BREEDS[i - 1] if i <= len(BREEDS) else f'Breed_{i:03d}'}"
            for i in range(1, num_classes + 1)]


def class_style(class_index: int) -> tuple[str, float, str]:
    """The (shape, hue family, texture) that defines 0-based class ``class_index`` (< MAX_CLASSES)."""
    if not 0 <= class_index < MAX_CLASSES:
        raise ValueError(f"class_index must be in 0..{MAX_CLASSES - 1}, got {class_index}")
    return (SHAPES[class_index % len(SHAPES)], HUE_FAMILIES[class_index % len(HUE_FAMILIES)],
            TEXTURES[class_index % len(TEXTURES)])


def _regular_polygon(corners: int, radius: float = 1.0, start_deg: float = -90.0) -> list[tuple[float, float]]:
    angles = [math.radians(start_deg + 360.0 * k / corners) for k in range(corners)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


_ARM = 0.3
# Outlines in unit coordinates: x and y in [-1, 1], y pointing down.
POLYGONS = {
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": _regular_polygon(3),
    "star": [p for pair in zip(_regular_polygon(5), _regular_polygon(5, 0.42, -54.0)) for p in pair],
    "cross": [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1),
              (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)],
    "diamond": [(0, -1), (0.55, 0), (0, 1), (-0.55, 0)],
    "hexagon": _regular_polygon(6, 0.95),
    "arrow": [(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)],
    "hourglass": [(-0.75, -0.95), (0.75, -0.95), (0.12, 0), (0.75, 0.95), (-0.75, 0.95), (-0.12, 0)],
}


def _shape_mask(shape: str, diameter: int) -> Image.Image:
    """An 'L' mask, diameter x diameter, 255 inside the shape."""
    mask = Image.new("L", (diameter, diameter), 0)
    draw = ImageDraw.Draw(mask)
    half = (diameter - 1) / 2

    def disc(cx: float, cy: float, radius: float, fill: int) -> None:
        draw.ellipse([half * (1 + cx - radius), half * (1 + cy - radius),
                      half * (1 + cx + radius), half * (1 + cy + radius)], fill=fill)

    if shape in POLYGONS:
        draw.polygon([(half * (1 + x), half * (1 + y)) for x, y in POLYGONS[shape]], fill=255)
    elif shape == "circle":
        disc(0, 0, 0.9, 255)
    elif shape == "ring":
        disc(0, 0, 1.0, 255)
        disc(0, 0, 0.55, 0)
    elif shape == "crescent":
        disc(0, 0, 1.0, 255)
        disc(0.45, -0.15, 0.8, 0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _texture(texture: str, diameter: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean diameter x diameter array: True where the object shows its second (darker) colour."""
    v, u = np.mgrid[-1:1:diameter * 1j, -1:1:diameter * 1j]
    bands = rng.uniform(1.6, 2.4)  # light+dark pairs per object radius: a period of about diameter / 4 px
    phase = rng.uniform(0, 1, size=2)
    if texture == "solid":
        return np.zeros_like(u, dtype=bool)
    if texture == "stripes":
        return np.floor(u * bands + phase[0]) % 2 == 1
    if texture == "checker":
        return (np.floor(u * bands + phase[0]) + np.floor(v * bands + phase[1])) % 2 == 1
    if texture == "dots":
        fu, fv = (u * bands + phase[0]) % 1 - 0.5, (v * bands + phase[1]) % 1 - 0.5
        return fu * fu + fv * fv < 0.3 ** 2
    if texture == "target":
        return np.floor(np.hypot(u, v) * bands + phase[0]) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _hsv_to_rgb255(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A low-saturation linear gradient between two random colours, in a random direction."""
    start = _hsv_to_rgb255(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.15, 0.95))
    end = np.clip(start + rng.uniform(-50, 50, size=3), 0, 255)
    angle = rng.uniform(0, 2 * math.pi)
    along = (np.arange(width, dtype=np.float32) * math.cos(angle)
             + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))
    along = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    # One channel at a time: numpy is slow on a trailing axis of length 3.
    return Image.merge("RGB", [Image.fromarray((a + along * (b - a) + 0.5).astype(np.uint8))
                               for a, b in zip(start, end)])


def render_image(class_index: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Draw one RGB image of class ``class_index`` (0-based) at ``size`` = (width, height) pixels.

    All randomness (object position, scale, rotation and colour, background, texture phase, luminance
    noise) comes from ``rng``, so the same generator state gives the same image. The object lies inside the
    centred square of side 0.85 x the shorter side, so a resize + centre crop always sees all of it.
    """
    shape, hue, texture = class_style(class_index)
    width, height = size
    short = min(width, height)
    canvas = _background(rng, width, height)

    diameter = max(8, int(short * rng.uniform(0.4, 0.75)))
    fill = _hsv_to_rgb255(hue + rng.uniform(-0.06, 0.06), rng.uniform(0.55, 0.95), rng.uniform(0.55, 1.0))
    dark = fill * rng.uniform(0.35, 0.55)
    rgb = np.where(_texture(texture, diameter, rng)[..., None], dark, fill).astype(np.uint8)
    patch = Image.fromarray(np.dstack([rgb, np.asarray(_shape_mask(shape, diameter))]), "RGBA")
    patch = patch.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, expand=True)

    slack = max(0.0, (SAFE_FRACTION * short - diameter) / 2)
    centre_x = width / 2 + rng.uniform(-slack, slack)
    centre_y = height / 2 + rng.uniform(-slack, slack)
    canvas.paste(patch, (round(centre_x - patch.width / 2), round(centre_y - patch.height / 2)), patch)

    noise = rng.standard_normal((height, width), dtype=np.float32) * rng.uniform(2, 10) + 128.5
    noise = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB")
    return ImageChops.add(canvas, noise, offset=-128)  # Gaussian luminance noise, clipped to 0..255


def _image_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """(width, height), each in [min_side, max_side], aspect ratio log-uniform within 1:2..2:1."""
    low = math.log(max(0.5, min_side / max_side))
    high = math.log(min(2.0, max_side / min_side))
    ratio = math.exp(rng.uniform(low, high))  # width / height
    height = rng.uniform(max(min_side, min_side / ratio), min(max_side, max_side / ratio))
    width = height * ratio
    return (int(np.clip(round(width), min_side, max_side)), int(np.clip(round(height), min_side, max_side)))


def _write_class_images(class_dir: Path, split: str, class_index: int, count: int, seed: int,
                        min_side: int, max_side: int) -> None:
    """Write images 0..count-1 of one class in one split, each from its own (seed, split, class, index) stream."""
    for index in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), class_index, index])
        image = render_image(class_index, rng, _image_size(rng, min_side, max_side))
        image.save(class_dir / f"{class_dir.name[4:]}_{split}_{index:05d}.jpg", "JPEG",
                   quality=int(rng.integers(60, 96)))


def generate_dataset(root, num_classes=5, train_per_class=40, valid_per_class=10, test_per_class=10,
                     seed=0, min_side=96, max_side=256, splits=("train", "valid", "test"),
                     overwrite=False, workers=1) -> dict:
    """Write an ImageFolder tree of synthetic JPEGs and return a summary.

    Writes ``<root>/<split>/<NNN.Breed>/<Breed>_<split>_<index:05d>.jpg`` for each split in ``splits``
    whose per-class count is above 0 (a split with count 0 gets no folder). ``num_classes`` is 1..165;
    image sides are drawn in ``[min_side, max_side]``. An existing non-empty split folder raises
    FileExistsError unless ``overwrite=True``, which deletes that split folder first. ``workers`` > 1
    renders in that many processes; the files are the same either way.

    Returns ``{"root": str, "classes": [folder names], "counts": {split: {class: n}} (one entry per split
    written), "images": total written, "seconds": wall time}``.
    """
    per_class = {"train": train_per_class, "valid": valid_per_class, "test": test_per_class}
    splits = tuple(dict.fromkeys(splits))
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}: choose from {SPLITS}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be between 1 and {MAX_CLASSES}, got {num_classes}")
    if any(int(n) != n or n < 0 for n in per_class.values()):
        raise ValueError(f"per-class counts must be non-negative integers, got {per_class}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")

    started = time.perf_counter()
    root = Path(root)
    classes = breed_folder_names(num_classes)
    written = [s for s in splits if per_class[s] > 0]
    for split in written:
        if (root / split).exists() and any((root / split).iterdir()):
            if not overwrite:
                raise FileExistsError(f"{root / split} is not empty (pass overwrite=True to replace it)")
            shutil.rmtree(root / split)

    jobs = [(root / split / folder, split, class_index, int(per_class[split]), int(seed), min_side, max_side)
            for split in written for class_index, folder in enumerate(classes)]
    for job in jobs:
        job[0].mkdir(parents=True, exist_ok=True)
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold torch/OpenMP threads that a forked child would inherit broken.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_class_images, *zip(*jobs)))
    else:
        for job in jobs:
            _write_class_images(*job)

    counts = {split: {folder: int(per_class[split]) for folder in classes} for split in written}
    return {"root": str(root), "classes": classes, "counts": counts,
            "images": sum(sum(c.values()) for c in counts.values()),
            "seconds": time.perf_counter() - started}


def _usable_cpus() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cpus, 8)


def main(argv=None) -> dict:
    """Command-line entry point: parse ``argv``, generate, print one summary line, return the summary."""
    parser = argparse.ArgumentParser(prog="python -m dogbreeds.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="root of the ImageFolder tree to write")
    parser.add_argument("--classes", type=int, default=5, help=f"number of classes, 1..{MAX_CLASSES}")
    parser.add_argument("--train", type=int, default=40, help="train images per class (0: no train/)")
    parser.add_argument("--valid", type=int, default=10, help="valid images per class (0: no valid/)")
    parser.add_argument("--test", type=int, default=10, help="test images per class (0: no test/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=96)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--overwrite", action="store_true", help="replace existing split folders")
    parser.add_argument("--workers", type=int, default=_usable_cpus(),
                        help="processes to render with (default: the CPUs this process may use, at most 8)")
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(args.out_dir, args.classes, args.train, args.valid, args.test, args.seed,
                                   args.min_side, args.max_side, overwrite=args.overwrite,
                                   workers=args.workers)
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    print(f"classes={len(summary['classes'])} images={summary['images']} seconds={summary['seconds']:.2f} "
          f"path={summary['root']}")
    return summary


if __name__ == "__main__":
    main()

"""Tests for dogbreeds.synthetic: layout, determinism, size variety and learnability of the generated set."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dogbreeds import synthetic
from dogbreeds.synthetic import breed_folder_names, class_style, generate_dataset, render_image


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_breed_folder_names():
    names = breed_folder_names(140)
    assert names[:6] == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier", "004.Akita",
                         "005.Alaskan_malamute", "006.American_eskimo_dog"]
    assert names[132] == "133.Yorkshire_terrier"
    assert names[133] == "134.Breed_134" and names[-1] == "140.Breed_140"
    real = [n[4:] for n in names[:133]]
    assert real == sorted(real, key=str.lower) and len(set(real)) == 133
    assert [int(n[:3]) for n in names] == list(range(1, 141))
    assert breed_folder_names(3) == names[:3]
    with pytest.raises(ValueError):
        breed_folder_names(0)


def test_layout_counts_and_jpeg_files(tmp_path):
    summary = generate_dataset(tmp_path, num_classes=3, train_per_class=4, valid_per_class=2, test_per_class=3)
    classes = breed_folder_names(3)
    assert summary["root"] == str(tmp_path) and summary["classes"] == classes
    assert summary["counts"] == {"train": dict.fromkeys(classes, 4), "valid": dict.fromkeys(classes, 2),
                                 "test": dict.fromkeys(classes, 3)}
    assert summary["images"] == 27 and summary["seconds"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train", "valid"]
    for split, per_class in (("train", 4), ("valid", 2), ("test", 3)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == classes
        for folder in classes:
            files = sorted((tmp_path / split / folder).iterdir())
            assert [f.name for f in files] == [f"{folder[4:]}_{split}_{i:05d}.jpg" for i in range(per_class)]
            for f in files:
                with Image.open(f) as img:
                    assert img.format == "JPEG" and img.mode == "RGB"
                    img.load()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    args = dict(num_classes=3, train_per_class=3, valid_per_class=2, test_per_class=2)
    first = tree_bytes(Path(generate_dataset(tmp_path / "a", seed=7, **args)["root"]))
    again = tree_bytes(Path(generate_dataset(tmp_path / "b", seed=7, **args)["root"]))
    other = tree_bytes(Path(generate_dataset(tmp_path / "c", seed=8, **args)["root"]))
    assert len(first) == 21 and first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_changing_train_count_keeps_valid_and_test_images(tmp_path):
    small = tree_bytes(Path(generate_dataset(tmp_path / "s", num_classes=2, train_per_class=2)["root"]))
    large = tree_bytes(Path(generate_dataset(tmp_path / "l", num_classes=2, train_per_class=5)["root"]))
    assert sum(name.startswith("train/") for name in large) == 10
    # Every file of the smaller set (valid, test, and the first train images) is unchanged.
    assert {name: large[name] for name in small} == small


def test_parallel_workers_write_the_same_files(tmp_path):
    args = dict(num_classes=2, train_per_class=3, valid_per_class=1, test_per_class=1, seed=3)
    serial = tree_bytes(Path(generate_dataset(tmp_path / "one", workers=1, **args)["root"]))
    parallel = tree_bytes(Path(generate_dataset(tmp_path / "two", workers=2, **args)["root"]))
    assert len(serial) == 10 and serial == parallel


def test_sizes_and_aspect_ratios_vary_within_bounds(tmp_path):
    generate_dataset(tmp_path / "d", num_classes=4, train_per_class=15, valid_per_class=0, test_per_class=0)
    sizes = [Image.open(p).size for p in (tmp_path / "d").rglob("*.jpg")]
    assert len(sizes) == 60
    assert all(96 <= side <= 256 for size in sizes for side in size)
    ratios = np.array([w / h for w, h in sizes])
    assert ratios.min() >= 0.49 and ratios.max() <= 2.01
    assert ratios.min() < 0.7 and ratios.max() > 1.4  # both tall and wide images
    assert len(set(sizes)) >= 50
    assert max(w * h for w, h in sizes) > 3 * min(w * h for w, h in sizes)

    generate_dataset(tmp_path / "n", num_classes=1, train_per_class=20, valid_per_class=0, test_per_class=0,
                     min_side=40, max_side=50)
    narrow = [Image.open(p).size for p in (tmp_path / "n").rglob("*.jpg")]
    assert all(40 <= side <= 50 for size in narrow for side in size) and len(set(narrow)) > 5


def test_only_requested_splits_and_nonzero_counts_get_folders(tmp_path):
    summary = generate_dataset(tmp_path / "t", num_classes=2, train_per_class=3, splits=("train",))
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["train"]
    assert summary["counts"] == {"train": dict.fromkeys(breed_folder_names(2), 3)} and summary["images"] == 6

    summary = generate_dataset(tmp_path / "z", num_classes=2, train_per_class=2, valid_per_class=0,
                               test_per_class=1)
    assert sorted(p.name for p in (tmp_path / "z").iterdir()) == ["test", "train"]
    assert set(summary["counts"]) == {"train", "test"} and summary["images"] == 6


def test_existing_split_needs_overwrite(tmp_path):
    generate_dataset(tmp_path, num_classes=2, train_per_class=4, valid_per_class=0, test_per_class=0)
    with pytest.raises(FileExistsError):
        generate_dataset(tmp_path, num_classes=2, train_per_class=2, valid_per_class=0, test_per_class=0)
    generate_dataset(tmp_path, num_classes=2, train_per_class=2, valid_per_class=0, test_per_class=0,
                     overwrite=True)
    assert len(list((tmp_path / "train").rglob("*.jpg"))) == 4  # stale images 2 and 3 are gone


@pytest.mark.parametrize("kwargs", [dict(splits=("train", "holdout")), dict(num_classes=0),
                                    dict(num_classes=synthetic.MAX_CLASSES + 1), dict(train_per_class=-1),
                                    dict(seed=-1), dict(min_side=200, max_side=100)])
def test_bad_arguments_raise_before_writing(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_cli_prints_one_summary_line(tmp_path, capsys):
    summary = synthetic.main([str(tmp_path / "cli"), "--classes", "2", "--train", "3", "--valid", "1",
                              "--test", "0", "--seed", "5", "--workers", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("classes=2 images=8 seconds=") and lines[0].endswith(f"path={tmp_path / 'cli'}")
    assert summary["images"] == 8 and sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["train", "valid"]
    with pytest.raises(SystemExit):  # the folder is not empty now
        synthetic.main([str(tmp_path / "cli"), "--classes", "2", "--workers", "1"])


def test_render_image_and_class_styles():
    image = render_image(4, np.random.default_rng(1), (130, 70))
    assert image.mode == "RGB" and image.size == (130, 70)
    assert np.array_equal(np.asarray(image), np.asarray(render_image(4, np.random.default_rng(1), (130, 70))))
    assert not np.array_equal(np.asarray(image), np.asarray(render_image(5, np.random.default_rng(1), (130, 70))))
    styles = [class_style(i) for i in range(synthetic.MAX_CLASSES)]
    assert len(set(styles)) == synthetic.MAX_CLASSES
    # Hue families are shared among the first classes: colour alone cannot be what defines a class.
    assert len({hue for _, hue, _ in styles[:5]}) < 5
    with pytest.raises(ValueError):
        class_style(synthetic.MAX_CLASSES)


def load_split(root: Path, split: str, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Centre-square crop resized to side x side, as float RGB in [0, 1], with class indices."""
    pixels, labels = [], []
    for label, folder in enumerate(sorted((root / split).iterdir())):
        for path in sorted(folder.iterdir()):
            with Image.open(path) as img:
                w, h = img.size
                s = min(w, h)
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                pixels.append(np.asarray(img.resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255)
            labels.append(label)
    return np.stack(pixels), np.array(labels)


def mean_colour(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(1, 2))


def hue_and_spectrum(images: np.ndarray) -> np.ndarray:
    """Position- and rotation-free features: hue histogram of saturated pixels + radial power spectrum."""
    features = []
    for image in images:
        hsv = np.asarray(Image.fromarray((image * 255).astype(np.uint8)).convert("HSV"), np.float32)
        saturated = hsv[..., 1] > 100
        hues = np.histogram(hsv[..., 0][saturated], bins=6, range=(0, 256))[0] / max(1, saturated.sum())
        gray = image.mean(axis=-1)
        power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
        yy, xx = np.indices(gray.shape) - gray.shape[0] // 2
        radius = np.hypot(yy, xx).astype(int).ravel()
        radial = np.bincount(radius, power.ravel()) / np.bincount(radius)
        features.append(np.concatenate([hues, np.log(radial[: gray.shape[0] // 2] + 1e-6)]))
    return np.array(features)


def nearest_neighbour_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    distances = ((test_x[:, None, :] - train_x[None, :, :]) ** 2).sum(axis=-1)
    return float((train_y[distances.argmin(axis=1)] == test_y).mean())


def test_classes_are_learnable_but_not_by_mean_colour(tmp_path):
    generate_dataset(tmp_path, num_classes=5, train_per_class=40, valid_per_class=0, test_per_class=20, seed=0)
    (train_images, train_y), (test_images, test_y) = load_split(tmp_path, "train"), load_split(tmp_path, "test")
    chance = 1 / 5
    shape_and_hue = nearest_neighbour_accuracy(hue_and_spectrum(train_images), train_y,
                                               hue_and_spectrum(test_images), test_y)
    colour_only = nearest_neighbour_accuracy(mean_colour(train_images), train_y, mean_colour(test_images), test_y)
    assert shape_and_hue > 2.5 * chance  # 0.65 at seed 0; 0.65..0.70 over seeds 0..5
    assert colour_only < 0.5 and colour_only < shape_and_hue - 0.15  # 0.33 at seed 0; 0.22..0.33 over seeds 0..5

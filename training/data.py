"""Dataset discovery, validation, splitting and loading for ImageFolder channels.

A channel is a folder with one sub-folder per class (``001.Affenpinscher/``). The class list comes from
``train``; ``valid`` and ``test`` are mapped onto it, and split from ``train`` (seeded, stratified)
when absent. Problems that make training meaningless (no train folder, an empty class, a class in
valid/test that train lacks) raise ``DatasetError`` before any compute is spent; unreadable images
are reported with their paths and skipped, at planning time when the header is broken and at load
time when the data is truncated.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms import v2 as T

from model_code.inference import ClientError, display_label, eval_transform, load_image_file

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "valid", "test")
AUGMENTATIONS = ("none", "flip", "standard")


class DatasetError(Exception):
    """The dataset layout makes training impossible or meaningless; the message says what to fix."""


@dataclass
class DataPlan:
    """What will be trained on: classes, the (path, target) samples of each split, and what was skipped."""

    classes: list[str]
    samples: dict[str, list[tuple[str, int]]]
    derived_splits: list[str] = field(default_factory=list)  # splits carved out of train
    warnings: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}
    fingerprint: str = ""

    @property
    def labels(self) -> list[str]:
        return [display_label(c) for c in self.classes]

    def class_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for split, samples in self.samples.items():
            per_class = dict.fromkeys(self.classes, 0)
            for _, target in samples:
                per_class[self.classes[target]] += 1
            counts[split] = per_class
        return counts


def _class_folders(root: Path) -> dict[str, list[Path]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        folder.name: sorted(f for f in folder.rglob("*")
                            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                            and not f.name.startswith("."))
        for folder in folders
    }


def _header_problem(path: Path) -> str | None:
    """Reads only the header: catches empty files, non-images and unknown formats cheaply."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def _stratified_split(samples: list[tuple[str, int]], fraction: float, seed: int):
    """Split off ``fraction`` of each class (at least one image when the class has three or more)."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    rng = random.Random(seed)
    kept, taken = [], []
    for target in sorted(by_class):
        items = by_class[target][:]
        rng.shuffle(items)
        n_take = int(round(len(items) * fraction))
        if n_take == 0 and len(items) >= 3:
            n_take = 1
        taken += items[:n_take]
        kept += items[n_take:]
    return sorted(kept), sorted(taken)


def plan_dataset(train_dir, valid_dir=None, test_dir=None, *, seed: int = 0,
                 valid_fraction: float = 0.1, test_fraction: float = 0.1) -> DataPlan:
    """Scan and validate the channels; split valid/test from train when they are missing."""
    train_dir = Path(train_dir) if train_dir else None
    if train_dir is None or not train_dir.is_dir():
        raise DatasetError(f"train channel not found: {train_dir} is not a directory "
                           "(expected one sub-folder per class, e.g. train/001.Affenpinscher/)")
    train_folders = _class_folders(train_dir)
    if not train_folders:
        raise DatasetError(f"train channel {train_dir} has no class folders")
    classes = sorted(train_folders)
    class_index = {c: i for i, c in enumerate(classes)}
    plan = DataPlan(classes=classes, samples={})

    def collect(split: str, root: Path, folders: dict[str, list[Path]]):
        samples = []
        for cls, files in folders.items():
            for f in files:
                problem = _header_problem(f)
                if problem:
                    plan.skipped.append({"path": str(f.relative_to(root.parent)), "reason": problem})
                else:
                    samples.append((str(f), class_index[cls]))
        plan.samples[split] = samples

    collect("train", train_dir, train_folders)
    empty = [c for c in classes if not any(t == class_index[c] for _, t in plan.samples["train"])]
    if empty:
        raise DatasetError(f"{len(empty)} class folder(s) in train have no readable images: "
                           f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}")

    for split, root in (("valid", valid_dir), ("test", test_dir)):
        root = Path(root) if root else None
        if root is None or not root.is_dir() or not any(root.iterdir()):
            continue
        folders = _class_folders(root)
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise DatasetError(f"{split} has class folders that train lacks: {', '.join(unknown[:10])}"
                               " (class folders must match across splits)")
        missing = sorted(set(classes) - set(folders))
        if missing:
            plan.warnings.append(f"{split} lacks {len(missing)} class(es) present in train: "
                                 f"{', '.join(missing[:10])}")
        collect(split, root, folders)

    for split, fraction in (("valid", valid_fraction), ("test", test_fraction)):
        if split not in plan.samples:
            offset = SPLITS.index(split)
            plan.samples["train"], plan.samples[split] = _stratified_split(
                plan.samples["train"], fraction, seed + offset)
            plan.derived_splits.append(split)
    plan.samples = {s: plan.samples[s] for s in SPLITS}
    plan.fingerprint = dataset_fingerprint(plan)
    return plan


def dataset_fingerprint(plan: DataPlan) -> str:
    """A short hash of every sample's split, class, file name and size: changes when the data does."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path, target in plan.samples.get(split, []):
            p = Path(path)
            digest.update(f"{split}/{plan.classes[target]}/{p.name}/{p.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def train_transform(image_size: int, augment: str, mean, std):
    """Train-time transform. ``none`` is the eval transform, which is what makes features cacheable."""
    if augment == "none":
        return eval_transform(image_size, mean, std)
    if augment == "flip":
        return T.Compose([T.RandomHorizontalFlip(), eval_transform(image_size, mean, std)])
    if augment == "standard":
        return T.Compose([
            T.PILToTensor(),
            T.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ])
    raise ValueError(f"unknown augment {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")


class ImageSamples(Dataset):
    """(path, target) samples -> (tensor, target), or a ``BadImage`` when the file can't be decoded."""

    def __init__(self, samples: list[tuple[str, int]], transform, image_size: int):
        self.samples, self.transform, self.image_size = samples, transform, image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            return self.transform(load_image_file(path, self.image_size)), target
        except ClientError as exc:
            return BadImage(path, exc.message)


@dataclass
class BadImage:
    path: str
    reason: str


def collate_skipping_bad(batch):
    """Collate good samples; bad ones travel alongside so the loop can report them, not crash."""
    good = [b for b in batch if not isinstance(b, BadImage)]
    bad = [{"path": b.path, "reason": b.reason} for b in batch if isinstance(b, BadImage)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([g[0] for g in good])
    targets = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, targets, bad


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The RNG for one epoch's order (stream 0) or its workers' seeds (stream 1): a resumed run sees
    the same order as an uninterrupted one, and the image loop the same order as the feature loop."""
    return torch.Generator().manual_seed((seed * 100_003 + epoch) * 2 + stream)


def drops_last_batch(num_samples: int, batch_size: int) -> bool:
    """A last training batch of one sample breaks BatchNorm in train mode: drop it. Both the image
    loader and the cached-feature batches follow this rule, so they see the same batches."""
    return num_samples > 1 and num_samples % batch_size == 1


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, *, shuffle_seed=None,
                epoch: int = 0, pin_memory: bool = False, timeout: float = 0) -> DataLoader:
    """A DataLoader; with ``shuffle_seed`` its order (and worker seeds) depend only on seed and epoch."""
    shuffle = shuffle_seed is not None
    # The loader draws its workers' base seed from its own generator: keep that off the order's stream.
    sampler = RandomSampler(dataset, generator=epoch_generator(shuffle_seed, epoch)) if shuffle else None
    drop_last = shuffle and drops_last_batch(len(dataset), batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_skipping_bad, pin_memory=pin_memory, drop_last=drop_last,
                      generator=epoch_generator(shuffle_seed, epoch, stream=1) if shuffle else None,
                      timeout=timeout if num_workers else 0)

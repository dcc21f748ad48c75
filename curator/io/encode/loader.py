"""Decoding images for the model: a torch Dataset over image locators (files, or members
of tar shards read by offset) whose failures are reported per image, not raised, and
DataLoader batches of preprocessed tensors."""

from __future__ import annotations

import io
import warnings


def describe(locator) -> str:
    if locator[0] == "tar":
        return f"{locator[1]}:{locator[4]}"
    return locator[1]


def _open_image(locator):
    from PIL import Image

    if locator[0] == "tar":
        _, shard, offset, size, _member = locator
        with open(shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        image = Image.open(io.BytesIO(data))
        image.load()
    else:
        with open(locator[1], "rb") as fh:
            image = Image.open(fh)
            image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    name = type(exc).__name__
    if name == "UnidentifiedImageError":
        return "not a readable image"
    message = " ".join(str(exc).split())
    return f"{name}: {message}" if message else name


class _ImageDataset:
    """Map-style dataset over image locators: (index, tensor or None, reason or None).

    A plain class (not a torch subclass) so the module imports without torch and the
    dataset pickles to spawned workers.
    """

    def __init__(self, locators: list, indices: list[int], preprocess):
        self.locators, self.indices, self.preprocess = locators, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        try:
            return index, self.preprocess(_open_image(self.locators[index])), None
        except Exception as exc:  # noqa: BLE001 (an unreadable image is data, not a crash)
            return index, None, _failure_reason(exc)


def _collate(batch):
    import torch

    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason in batch if x is None]
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([x for _, x in good]), bad


def image_batches(locators, indices, preprocess, batch_size, num_workers, pin_memory):
    """Batches ``(indices, images tensor or None, [(index, reason)])`` decoded in workers.

    Workers are forked (the platform default) and only decode images; the warning Lance
    gives on fork (its threads are not used in the child) is silenced here alone.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(_ImageDataset(locators, indices, preprocess), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=pin_memory, persistent_workers=False)
    with warnings.catch_warnings():  # workers start here
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        batches = iter(loader)
    yield from batches


"""The OpenCLIP model: device choice, the name a table records for the weights, loading
(tags or local checkpoints, weights only), and the encoding loops (raw outputs,
``normalize=False``). torch and open_clip are imported only inside these functions."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

import numpy as np

from ...errors import BadInput, MissingDependency
from ..export.manifest import sha256  # the checksum the export manifest uses

INSTALL_HINT = "encode needs torch and open_clip: pip install 'clip-curator[clip]'"
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


def require():
    """(torch, open_clip), or MissingDependency with the install hint."""
    try:
        import open_clip
        import PIL  # noqa: F401
        import torch
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    return torch, open_clip


def pick_device(device: str | None = "auto") -> str:
    """The torch device to run on: ``auto`` picks CUDA, then MPS, then CPU.

    An explicit device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) is checked to exist.
    """
    torch, _ = require()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BadInput(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"device {device!r} is not available: torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"device {device!r} is not available: "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not mps_ok:
        raise BadInput(f"device {device!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return str(dev)


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or value.startswith(".")
            or value.lower().endswith(CHECKPOINT_EXTENSIONS))


def model_name_for(arch: str, pretrained: str | os.PathLike | None = None, seed: int = 0) -> str:
    """The name a table records for embeddings of ``arch`` with ``pretrained`` weights.

    ``open_clip:ARCH/TAG`` for an open_clip pretrained tag, ``open_clip:ARCH/FILE@sha256:…``
    for a local checkpoint file (so the name follows the weights, not the path), and
    ``open_clip:ARCH/random-init-seed-S`` for a randomly initialised model. Raises
    BadInput for an unknown architecture or tag, or a missing checkpoint file.
    """
    _, open_clip = require()
    remote = arch.startswith(("hf-hub:", "local-dir:"))
    if not remote and arch not in open_clip.list_models():
        raise BadInput(f"unknown OpenCLIP architecture {arch!r}: python -c 'import open_clip; "
                       f"print(open_clip.list_models())' lists them (e.g. ViT-B-32, ViT-L-14)")
    if pretrained is None or str(pretrained) == "":
        return f"open_clip:{arch}" if remote else f"open_clip:{arch}/random-init-seed-{seed}"
    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        digest = sha256(pretrained)[:16]
        return f"open_clip:{arch}/{os.path.basename(pretrained)}@sha256:{digest}"
    if remote:
        raise BadInput(f"{pretrained}: no such file or directory")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    for tag in tags:
        if _clean_tag(tag) == _clean_tag(pretrained):
            return f"open_clip:{arch}/{tag}"
    if _looks_like_path(pretrained):
        raise BadInput(f"{pretrained}: no such file or directory")
    known = ", ".join(tags) if tags else "none"
    raise BadInput(f"unknown pretrained tag {pretrained!r} for {arch}: known tags: {known}; "
                   f"or give a local checkpoint file")


OPEN_CLIP_NOISE = "No pretrained weights loaded"  # open_clip's warning for a random init


class _DropOpenClipNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return OPEN_CLIP_NOISE not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip_logs():
    """Drop exactly open_clip's "No pretrained weights loaded … initialized randomly"
    warning while a model is built (curator says so itself, once, in its own words).

    open_clip logs it on the root logger; the filter also sits on open_clip's own loggers
    and on every handler (and the last-resort handler), so it holds however open_clip or
    the application routes its logging. Other messages pass.
    """
    flt = _DropOpenClipNoise()
    root = logging.getLogger()
    targets = [root, logging.getLogger("open_clip"), logging.getLogger("open_clip.factory"),
               *root.handlers]
    if logging.lastResort is not None:
        targets.append(logging.lastResort)
    for target in targets:
        target.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f".*{OPEN_CLIP_NOISE}.*")
            yield
    finally:
        for target in targets:
            target.removeFilter(flt)


def _check_checkpoint_is_safe(torch, path: str) -> None:
    """Refuse a checkpoint that needs unpickling code (``torch.load(weights_only=True)``).

    open_clip loads with ``weights_only=True`` too, but falls back to a plain
    ``torch.load`` on TypeError; checking first makes the guarantee ours. Safetensors and
    numpy (.npz, read without pickle) need no check.
    """
    if path.lower().endswith((".safetensors", ".npz", ".npy")):
        return
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # any failure: we refuse the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{path}: not a loadable weights-only checkpoint ({first})") from exc


def load_model(arch: str = "ViT-B-32", pretrained: str | os.PathLike | None = None,
               device: str | None = "auto", *, seed: int = 0):
    """Build an OpenCLIP model: ``(model, preprocess, tokenizer, model_name)``.

    ``pretrained``: an open_clip pretrained tag (open_clip fetches or finds it in its
    cache), a local checkpoint file (loaded with ``weights_only=True``; pickled code is
    refused), or None for random initialisation seeded by ``seed``. The model is in eval
    mode on ``pick_device(device)``; ``preprocess`` is the evaluation transform.
    """
    dev = pick_device(device)
    name = model_name_for(arch, pretrained, seed)
    model, preprocess, tokenizer = build_model(arch, pretrained, dev, seed, name)
    return model, preprocess, tokenizer, name


def build_model(arch: str, pretrained, dev: str, seed: int, name: str):
    torch, open_clip = require()
    pretrained = None if pretrained in (None, "") else str(pretrained)
    if pretrained is not None and os.path.isfile(pretrained):
        _check_checkpoint_is_safe(torch, pretrained)
    try:
        with _quiet_open_clip_logs(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=dev, weights_only=True)
        tokenizer = open_clip.get_tokenizer(arch)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"cannot load {name}: {first}") from exc
    model.eval()
    return model, preprocess, tokenizer


def autocast(torch, device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def encode_images(torch, model, loader, device) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """(indices, raw embeddings float32, [(index, reason) of unreadable images]) per batch."""
    for indices, x, bad in loader:
        if x is None:
            yield [], None, bad
            continue
        with torch.inference_mode(), autocast(torch, device):
            out = model.encode_image(x.to(device, non_blocking=True), normalize=False)
        yield indices, out.float().cpu().numpy(), bad


def encode_texts(torch, model, tokenizer, captions: list[str], indices: list[int], device,
                  batch_size) -> Iterator[tuple[list[int], np.ndarray]]:
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        tokens = tokenizer([captions[i] for i in chunk])
        with torch.inference_mode(), autocast(torch, device):
            out = model.encode_text(tokens.to(device), normalize=False)
        yield chunk, out.float().cpu().numpy()


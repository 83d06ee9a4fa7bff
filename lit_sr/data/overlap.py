"""Finding the same photo in two image sets: exact copies by pixel hash, near-duplicates by thumbnails.

A test image also used for training inflates the reported numbers; so does a validation image. Names
prove nothing (the same photo appears under two names), so the checks compare decoded pixels:

- :func:`pixel_hash`: SHA-1 of the decoded uint8 pixels and their shape (a renamed or re-encoded
  lossless copy has the same hash), taken of every flip/rotation (:func:`d4_variants`) of the other set.
- :func:`copies_among`: both checks of image files, for a checkpoint benchmarked on a set its run never
  compared with its training images (``lit-sr benchmark``).
- :func:`near_duplicates`: normalised cross-correlation of small grey thumbnails. Each image of set A is
  shrunk (area filter) to ``THUMB`` x ``THUMB`` over a few centred crops (a downscaled, slightly cropped
  copy lines up with one of them); a pair of similar aspect ratio whose best correlation against any
  flip/rotation of the other image reaches ``threshold`` is reported. Set5's ``woman`` is BSD200's
  ``302003`` downscaled by 0.72 (36 dB after alignment): it correlates at 0.988, while no other pair of
  the 291 against Set5 + Set14 reaches 0.8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lit_sr.data.images import read_image

THUMB = 24
CROPS = (1.0, 0.95, 0.9, 0.85)
THRESHOLD = 0.95


def pixel_hash(img: np.ndarray) -> str:
    """Content hash of a decoded uint8 HxWxC image (independent of the file name and format)."""
    h = hashlib.sha1(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def d4_variants(img: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of an HxWxC image: training's D4 augmentation turns a mirrored or rotated copy of
    a test image back into the test image, so the checks compare every one."""
    turns = [np.rot90(img, k, axes=(0, 1)) for k in range(4)]
    return turns + [t.transpose(1, 0, 2) for t in turns]


def _grey(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32)
    return x[..., 0] if x.shape[2] == 1 else x @ np.array([0.299, 0.587, 0.114], np.float32)


def _thumbs(img: np.ndarray, crops: Sequence[float]) -> np.ndarray:
    """(len(crops), THUMB*THUMB) zero-mean, unit-norm thumbnails of centred crops of ``img``."""
    g = _grey(img)
    h, w = g.shape
    out = []
    for f in crops:
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        top, left = (h - ch) // 2, (w - cw) // 2
        t = cv2.resize(g[top : top + ch, left : left + cw], (THUMB, THUMB), interpolation=cv2.INTER_AREA).ravel()
        t = t - t.mean()
        out.append(t / (np.linalg.norm(t) + 1e-6))
    return np.stack(out)


def near_duplicates(
    a: Sequence[np.ndarray], b: Sequence[np.ndarray], threshold: float = THRESHOLD, aspect_tol: float = 0.08
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, correlation)``: image ``a[i]`` contains a (rescaled, slightly cropped, flipped or rotated)
    copy of ``b[j]``."""
    if not a or not b:
        return []
    variants = [v for x in b for v in d4_variants(x)]  # b[j] is variants[8 j : 8 j + 8]
    ta = np.stack([_thumbs(x, CROPS) for x in a])  # (A, crops, T*T)
    tb = np.stack([_thumbs(x, (1.0,))[0] for x in variants])  # (8 B, T*T)
    corr = np.einsum("ack,bk->abc", ta, tb).max(axis=2)  # best crop of a[i] against each variant
    aspect_a = np.array([x.shape[1] / x.shape[0] for x in a])
    aspect_b = np.array([x.shape[1] / x.shape[0] for x in variants])
    close = np.abs(np.log(aspect_a[:, None] / aspect_b[None, :])) < aspect_tol + np.log(1 / min(CROPS))
    corr = np.where(close, corr, -1.0).reshape(len(a), len(b), 8).max(axis=2)
    return [(int(i), int(j), float(corr[i, j])) for i, j in np.argwhere(corr >= threshold)]


def d4_hashes(images: Sequence[np.ndarray]) -> dict[str, int]:
    """:func:`pixel_hash` of every flip/rotation of each image -> the image's index."""
    return {pixel_hash(v): j for j, img in enumerate(images) for v in d4_variants(img)}


def copies_among(train: Sequence[Path], evaluated: Sequence[Path]) -> list[tuple[Path, Path, float]]:
    """``(training image, evaluated image, correlation)`` for each pair where the evaluated image is the training
    image, or a flip/rotation of it (correlation 1.0), or a near-copy (:func:`near_duplicates`); two copies of one
    training image are two pairs."""
    a, b = [read_image(p) for p in train], [read_image(p) for p in evaluated]
    hashes = d4_hashes(b)
    found = {(i, hashes[h]): 1.0 for i, img in enumerate(a) if (h := pixel_hash(img)) in hashes}
    for i, j, c in near_duplicates(a, b):
        found.setdefault((i, j), c)
    return [(train[i], evaluated[j], c) for (i, j), c in sorted(found.items())]

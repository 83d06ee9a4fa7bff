"""Image reading and validation: every bad input raises one ImageError naming the file or folder."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lit_sr.data.images import ImageCache, ImageError, list_images, modcrop, read_image
from lit_sr.data.sources import BUILTIN_SOURCES, data_root, default_test_sets, resolve_images


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth colour image (compresses like a photo, so truncation really cuts pixel data)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    Image.fromarray(arr).save(path, **kw)
    return path


# ---- read_image: valid files
def test_png_jpeg_bmp_tiff_and_grayscale_shapes(tmp_path):
    rgb = _photo()
    for ext in ("png", "bmp", "tif"):
        assert np.array_equal(read_image(_save(tmp_path / f"a.{ext}", rgb)), rgb)
    jpg = read_image(_save(tmp_path / "a.jpg", rgb, quality=95))
    assert jpg.shape == (48, 64, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - rgb).mean() < 4
    grey = read_image(_save(tmp_path / "g.png", rgb[..., 0]))
    assert grey.shape == (48, 64, 1) and np.array_equal(grey[..., 0], rgb[..., 0])


def test_rgba_warns_and_drops_alpha(tmp_path):
    rgba = np.dstack([_photo(), np.full((48, 64), 7, np.uint8)])
    path = _save(tmp_path / "alpha.png", rgba)
    with pytest.warns(UserWarning, match=r"alpha\.png: alpha channel dropped"):
        out = read_image(path)
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out, rgba[..., :3])  # colour kept as is, not composited


def test_16bit_grey_png_scaled_to_8bit(tmp_path):
    values = np.array([[0, 128, 129, 257 * 100 + 128, 257 * 100 + 129, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (1, 6, 1)
    assert out[0, :, 0].tolist() == [0, 0, 1, 100, 101, 255]  # round(v / 257)


def test_16bit_rgb_png_scaled_to_8bit(tmp_path):
    rgb16 = np.array([[[0, 32896, 65535], [257 * 10 + 129, 257 * 10 + 128, 514]]], dtype=np.uint16)
    path = tmp_path / "deep_rgb.png"
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    assert out.tolist() == [[[0, 128, 255], [11, 10, 2]]]


def test_palette_image_becomes_rgb(tmp_path):
    rgb = _photo()
    pal = Image.fromarray(rgb).quantize(colors=16)
    path = tmp_path / "pal.png"
    pal.save(path)
    assert Image.open(path).mode == "P"
    out = read_image(path)
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out, np.asarray(pal.convert("RGB")))


def test_a_grey_palette_image_is_read_as_the_grey_file(tmp_path):
    # as RGB its Y would be compressed to 16-235 (about 1.3 dB more PSNR); grey files are their own Y
    grey = np.asarray(Image.fromarray(_photo()).convert("L"))
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    as_palette = read_image(tmp_path / "p.png")
    assert as_palette.shape == (48, 64, 1) and np.array_equal(as_palette, read_image(tmp_path / "l.png"))


# ---- read_image: bad files, each naming the file
def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match=r"nothere\.png does not exist"):
        read_image(tmp_path / "nothere.png")


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"cannot read image .*notes\.png.*not an image"):
        read_image(path)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file(tmp_path, ext):
    full = _save(tmp_path / f"full.{ext}", _photo(256, 256), **({"quality": 95} if ext == "jpg" else {}))
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\.{ext}.*(truncated|corrupt)"):
        read_image(cut)


def test_corrupt_png(tmp_path):
    data = bytearray(_save(tmp_path / "ok.png", _photo(128, 128)).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))  # garbage inside the compressed pixel data
    bad = tmp_path / "broken.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"broken\.png"):
        read_image(bad)


# ---- folders
def test_list_images_sorted_case_insensitive(tmp_path):
    rgb = _photo()
    for name in ("b.PNG", "a.jpg", "c.TIFF", "d.bmp", ".hidden.png"):
        _save(tmp_path / name, rgb)
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    _save(tmp_path / "sub" / "e.png", rgb)
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.TIFF", "d.bmp"]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match=r"empty holds no images.*put the images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ImageError, match=r"nowhere does not exist"):
        list_images(tmp_path / "nowhere")


def test_modcrop_numpy_and_tensor():
    arr = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    assert modcrop(arr, 3).shape == (6, 9, 3)
    assert np.array_equal(modcrop(arr, 3), arr[:6, :9])
    t = torch.arange(2 * 7 * 10).reshape(2, 1, 7, 10)
    assert modcrop(t, 4).shape == (2, 1, 4, 8)
    assert torch.equal(modcrop(t, 4), t[..., :4, :8])


# ---- cache
def _folder(tmp_path: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    return [_save(tmp_path / f"img{i}.png", _photo(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]


def test_cache_too_small_raises_or_skips(tmp_path):
    paths = _folder(tmp_path, [(96, 96), (40, 64)])
    with pytest.raises(ImageError, match=r"img1\.png is 64x40 pixels, smaller than the 84x84 needed"):
        ImageCache(paths, min_size=84)
    with pytest.warns(UserWarning, match=r"skipping .*img1\.png.*64x40"):
        cache = ImageCache(paths, min_size=84, on_error="skip")
    assert cache.paths == paths[:1] and len(cache) == 1 and cache[0].shape == (96, 96, 3)
    with pytest.raises(ImageError, match=r"none of the 1 images .*img1\.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ImageCache(paths[1:], min_size=84, on_error="skip")


def test_cache_bad_file_policy(tmp_path):
    paths = _folder(tmp_path, [(64, 64)])
    bad = tmp_path / "zz.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match=r"zz\.jpg"):
        ImageCache([*paths, bad])
    with pytest.warns(UserWarning, match=r"skipping .*zz\.jpg"):
        cache = ImageCache([*paths, bad], on_error="skip")
    assert len(cache) == 1 and [p.name for p, _ in cache.skipped] == ["zz.jpg"]


def test_cache_memmap_matches_memory_and_pickles_without_copy(tmp_path):
    paths = _folder(tmp_path, [(64, 80), (72, 72), (50, 60)])
    Image.fromarray(_photo(64, 64)[..., 0]).save(tmp_path / "grey.png")
    paths.append(tmp_path / "grey.png")
    ram = ImageCache(paths)
    mm = ImageCache(paths, memmap_threshold_mb=0, cache_dir=tmp_path / "cache")
    assert not ram.uses_memmap and mm.uses_memmap
    assert mm.memmap_path.parent == tmp_path / "cache" and mm.memmap_path.stat().st_size == ram.nbytes
    for i in range(len(paths)):
        assert np.array_equal(ram[i], mm[i]) and mm[i].shape == ram.shape(i) == mm.shape(i)
    assert mm[3].shape == (64, 64, 1)
    blob = pickle.dumps(mm)
    assert len(blob) < ram.nbytes // 4  # the pixels are not in the pickle
    again = pickle.loads(blob)
    assert np.array_equal(again[1], ram[1])
    # A second cache over the same files reuses the complete file instead of decoding again.
    mtime = mm.memmap_path.stat().st_mtime_ns
    reused = ImageCache(paths, memmap_threshold_mb=0, cache_dir=tmp_path / "cache")
    assert reused.memmap_path == mm.memmap_path and mm.memmap_path.stat().st_mtime_ns == mtime
    # Enlarged images are known from the index too (a reused cache, a DDP rank after the first).
    for _ in range(2):
        small = ImageCache(paths, min_size=62, enlarge_small=True, memmap_threshold_mb=0, cache_dir=tmp_path / "cache")
        assert [p.name for p in small.enlarged] == [paths[2].name] and small.shape(2)[:2] == (62, 75)


# ---- sources
def test_sources_builtin_and_unknown(tmp_path, monkeypatch):
    name, paths = resolve_images("builtin")
    assert name == "builtin" and [p.name for p in paths] == list(BUILTIN_SOURCES["builtin"])
    assert sum(read_image(p).shape[2] == 1 for p in paths) == 4  # camera, brick, grass, gravel
    assert [p.name for p in resolve_images("builtin_val")[1]] == ["chelsea.png", "coffee.png"]

    monkeypatch.setenv("LIT_SR_DATA", str(tmp_path))
    assert data_root() == tmp_path and default_test_sets() == []
    assert resolve_images("auto")[0] == "builtin"  # no 291 here: the quick presets fall back to the built-ins
    with pytest.raises(ImageError, match=r"'291' is T91 \+ BSD200 under the data root .*T91.*missing.*download"):
        resolve_images("291")
    (tmp_path / "Set5").mkdir()
    _folder(tmp_path / "Set5", [(32, 32)])
    assert default_test_sets() == ["Set5"]
    name, paths = resolve_images("Set5")
    assert name == "Set5" and [p.name for p in paths] == ["img0.png"]
    with pytest.raises(
        ImageError, match=r"unknown image source 'Set99'.*builtin, builtin_val.*Set99.*LIT_SR_DATA"
    ):
        resolve_images("Set99")
    with pytest.raises(ImageError, match=rf"^image source {tmp_path / 'nope'}: no such folder; check the path$"):
        resolve_images(str(tmp_path / "nope"))  # an absolute path is a folder, not a set name under LIT_SR_DATA
    here = tmp_path / "here"  # a relative path is that folder, never the data root's set of the same name
    (here / "Set5").mkdir(parents=True)
    _folder(here / "Set5", [(32, 32), (40, 40)])
    monkeypatch.chdir(here)
    assert [p.resolve().parent for p in resolve_images("./Set5")[1]] == [here / "Set5"] * 2
    assert len(resolve_images("Set5")[1]) == 1  # a bare name: the data root's
    (tmp_path / "DIV2K" / "valid").mkdir(parents=True)
    _folder(tmp_path / "DIV2K" / "valid", [(32, 32)])
    assert resolve_images("DIV2K/valid")[1] == [tmp_path / "DIV2K" / "valid" / "img0.png"]  # a name under the root
    with pytest.raises(ImageError, match=r"^image source ./Set99: no such folder; check the path$"):
        resolve_images("./Set99")

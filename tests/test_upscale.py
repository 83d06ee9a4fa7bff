"""``lit-sr upscale`` on real images: tiling, self-ensemble, overwrite refusal, alpha, 16 bits, folders."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
import wandb
import yaml
from PIL import Image

from lit_sr import upscale
from lit_sr.checkpoint import load_method
from lit_sr.cli import SRCLI, main
from lit_sr.data.color import to_y
from lit_sr.data.images import ImageError, modcrop, read_image
from lit_sr.data.resize import imresize
from lit_sr.errors import ConfigError, UserError
from lit_sr.methods.bicubic import Bicubic
from lit_sr.metrics import psnr_y
from lit_sr.paths import REPO, writable_folder
from lit_sr.upscale import (
    Picture,
    TilingWarning,
    check_device,
    read_picture,
    super_resolve_tiled,
    upscale_files,
    upscale_picture,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """vdsr_small trained at x2 for 100 steps of the quick preset on the built-in photos: its last checkpoint."""
    tmp = tmp_path_factory.mktemp("upscale_train")
    override = {
        "model": {"init_args": {"stages": [{"name": "train", "epochs": 2, "optimizer": {"name": "adam", "lr": 1e-3}}]}},
        "data": {
            "train_sources": ["builtin"],
            "test_sets": [],
            "batches_per_epoch": 50,
            "scales": [2],
            "scale_mode": "per_batch",
            "val_scales": [2],
            "val_max_images": 1,
        },
        "trainer": {"logger": False, "check_val_every_n_epoch": 2, "enable_progress_bar": False},
    }
    path = tmp / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    try:
        SRCLI(
            args=[
                "fit",
                "--config",
                str(REPO / "experiments/vdsr/quick.yaml"),
                "--config",
                str(path),
                "--run_dir",
                str(tmp / "run"),
            ]
        )
    finally:
        wandb.finish()
    return tmp / "run" / "checkpoints" / "last.ckpt"


def _lr_file(data_root, tmp_path, name: str = "butterfly", scale: int = 2):
    """The Set5 image's MATLAB-bicubic LR version as an 8-bit PNG (what a user would upscale)."""
    hr = torch.from_numpy(modcrop(read_image(data_root / "Set5" / f"{name}.png"), scale).copy())
    lr = imresize(hr.permute(2, 0, 1).double() / 255, 1 / scale).clamp(0, 1)
    arr = (lr * 255).round().byte().permute(1, 2, 0).numpy()
    path = tmp_path / f"{name}.png"
    Image.fromarray(arr).save(path)
    return path


def test_tiled_output_equals_untiled_within_one_level(trained, data_root, tmp_path):
    src = _lr_file(data_root, tmp_path)  # 128x128 LR: tiles of 48 with 16 of overlap -> 3x3 tiles
    main(["upscale", str(trained), str(src), "-o", str(tmp_path / "whole"), "--scale", "2", "--tile", "0"])
    main(["upscale", str(trained), str(src), "-o", str(tmp_path / "tiled"), "--scale", "2", "--tile", "48"])
    whole = np.asarray(Image.open(tmp_path / "whole" / "butterfly_x2.png")).astype(int)
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "butterfly_x2.png")).astype(int)
    assert whole.shape == tiled.shape == (256, 256, 3)
    assert np.abs(whole - tiled).max() <= 1
    bicubic = np.asarray(Image.open(tmp_path / "butterfly.png").resize((256, 256), Image.BICUBIC)).astype(int)
    assert np.abs(whole - bicubic).mean() > 1  # the network did change the image


@pytest.mark.parametrize("bits", [8, 16])
def test_the_colour_step_in_bands_gives_the_one_band_result_exactly(trained, data_root, bits, monkeypatch):
    """Cb/Cr, alpha and rounding run in bands of ``BAND_PIXELS`` output pixels with ``BAND_MARGIN`` LR rows of
    context (memory: the network's output plane and the samples, not float64 copies of the whole image)."""
    method = load_method(str(trained)).eval()
    hr = torch.from_numpy(modcrop(read_image(data_root / "Set5" / "butterfly.png"), 2).copy()).permute(2, 0, 1)
    lr = imresize(hr.double() / 255, 1 / 2).clamp(0, 1).permute(1, 2, 0).numpy()  # 128 x 128
    alpha = np.linspace(0, 1, lr.shape[1])[None].repeat(lr.shape[0], 0) ** 2
    picture = Picture(np.round(lr * (2**bits - 1)) / (2**bits - 1), alpha, bits)
    one = upscale_picture(method, picture, 2, tile=48)
    assert one.pixels.dtype == (np.uint16 if bits == 16 else np.uint8) and one.pixels.shape == (256, 256, 3)
    rows = []
    to_rgb = method.to_rgb
    monkeypatch.setattr(method, "to_rgb", lambda sr, lr, scale: rows.append(lr.shape[-2]) or to_rgb(sr, lr, scale))
    monkeypatch.setattr(upscale, "BAND_PIXELS", 1)  # the smallest bands: 16 LR rows
    many = upscale_picture(method, picture, 2, tile=48)
    assert len(rows) == 8 and max(rows) == 16 + 2 * upscale.BAND_MARGIN
    assert np.array_equal(many.pixels, one.pixels) and np.array_equal(many.alpha, one.alpha)

    def psnr(out: Picture) -> float:
        rgb = torch.from_numpy(out.pixels.astype(np.float64) / (2**bits - 1)).permute(2, 0, 1)[None]
        return psnr_y(to_y(rgb), to_y(hr[None].double() / 255), 2).item()

    assert psnr(one) > psnr(upscale_picture(Bicubic(), picture, 2)) + 0.5  # the network's Y, not bicubic's


def test_self_ensemble_is_not_worse_than_one_pass_on_set5(trained, data_root):
    method = load_method(str(trained)).eval()
    single, ensemble = [], []
    for path in sorted((data_root / "Set5").glob("*.png")):
        hr = torch.from_numpy(modcrop(read_image(path), 2).copy()).permute(2, 0, 1)[None].double() / 255
        lr_y = to_y(imresize(hr, 1 / 2))
        hr_y = to_y(hr)
        single.append(psnr_y(super_resolve_tiled(method, lr_y, 2, tile=0), hr_y, 2).item())
        ensemble.append(psnr_y(super_resolve_tiled(method, lr_y, 2, tile=0, ensemble=True), hr_y, 2).item())
    assert np.mean(single) > 33.66  # Set5 x2 bicubic: the model learned something
    print(f"Set5 x2: single pass {np.mean(single):.3f} dB, self-ensemble {np.mean(ensemble):.3f} dB")
    assert np.mean(ensemble) >= np.mean(single), f"ensemble {np.mean(ensemble):.3f} vs single {np.mean(single):.3f}"


def _fails(capsys, args: list[str], pattern: str) -> None:
    """``lit-sr ARGS`` exits with status 2 and one error line matching ``pattern``."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_existing_output_is_refused_naming_it_unless_force(trained, data_root, tmp_path, capsys):
    src = _lr_file(data_root, tmp_path, "bird")
    out = tmp_path / "out"
    main(["upscale", str(trained), str(src), "-o", str(out), "--scale", "2"])
    target = out / "bird_x2.png"
    target.write_bytes(b"keep me")
    _fails(capsys, ["upscale", str(trained), str(src), "-o", str(out), "--scale", "2"], f"{target}.*--force")
    assert target.read_bytes() == b"keep me"
    main(["upscale", str(trained), str(src), "-o", str(out), "--scale", "2", "--force"])
    assert Image.open(target).size == (2 * Image.open(src).width, 2 * Image.open(src).height)


def test_unsupported_scale_and_missing_input_are_explained(trained, tmp_path, capsys):
    out = str(tmp_path / "o")
    _fails(capsys, ["upscale", str(trained), str(tmp_path), "-o", out, "--scale", "8"], "not x8")
    missing = str(tmp_path / "nothing.png")
    _fails(capsys, ["upscale", str(trained), missing, "-o", out, "--scale", "2"], "nothing.png does not exist")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    _fails(capsys, ["upscale", str(trained), str(bad), "-o", out, "--scale", "2"], "cannot read image .*bad.png")


def test_alpha_is_resized_bicubically_and_kept(tmp_path):
    rng = np.random.default_rng(0)
    rgba = (rng.random((20, 30, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    (out,) = upscale_files(Bicubic(), [tmp_path / "a.png"], tmp_path / "out", 3, progress=False)
    got = np.asarray(Image.open(out))
    assert Image.open(out).mode == "RGBA" and got.shape == (60, 90, 4)
    x = torch.from_numpy(rgba).permute(2, 0, 1).double() / 255
    expected = (imresize(x, 3).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(got[..., 3] - expected[..., 3]).max() == 0  # alpha: MATLAB bicubic, exactly
    assert np.abs(got[..., :3].astype(int) - expected[..., :3]).max() <= 1  # bicubic Y + bicubic CbCr = bicubic RGB


@pytest.mark.parametrize("channels", [3, 1])
def test_16_bit_input_gives_16_bit_output_at_full_precision(tmp_path, channels):
    rng = np.random.default_rng(1)
    deep = (rng.random((18, 25, channels)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep[..., ::-1] if channels == 3 else deep[..., 0])
    assert read_picture(tmp_path / "d.png").bits == 16
    (out,) = upscale_files(Bicubic(), [tmp_path / "d.png"], tmp_path / "out", 2, progress=False)
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape[:2] == (36, 50)
    got = got[..., ::-1] if channels == 3 else got[..., None]
    x = torch.from_numpy(deep.astype(np.float64) / 65535).permute(2, 0, 1)
    expected = (imresize(x, 2).clamp(0, 1) * 65535).permute(1, 2, 0).numpy()
    # two 16-bit levels; an 8-bit path would be off by up to 128 levels
    assert np.abs(got.astype(np.float64) - expected).max() <= 2


def test_an_unreadable_input_stops_the_command_before_any_output_is_written(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(folder / "a.png")
    (folder / "z.png").write_bytes(b"not an image")
    good = folder / "b.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:-20])  # truncated: its last chunks and checksum are gone
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(folder / "c.jpg")
    (folder / "c.jpg").write_bytes((folder / "c.jpg").read_bytes()[:1100])  # its header is whole, its pixels not
    Image.fromarray(np.zeros((1, 50, 3), np.uint8)).save(folder / "line.png")
    for broken, message in [("z.png", "cannot read image"), ("b.png", "cannot read image"),
                            ("c.jpg", "cannot read image"), ("line.png", "is 50x1 pixels")]:  # fmt: skip
        with pytest.raises(ImageError, match=rf"{message} .*{broken}|{broken} {message}"):
            upscale_files(Bicubic(), [folder / "a.png", folder / broken], tmp_path / "out", 2, progress=False)
        assert not (tmp_path / "out" / "a_x2.png").exists()  # nothing written: the fixed rerun needs no --force


def test_outputs_never_overwrite_inputs_and_a_rerun_does_not_upscale_its_own_outputs(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "a_x2.png"):  # the user's own a_x2.png is an input too
        Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(photos / name)
    kept = (photos / "a_x2.png").read_bytes()
    with pytest.raises(ImageError, match=rf"{photos / 'a_x2.png'} is an input .*choose an -o folder apart"):
        upscale_files(Bicubic(), [photos], photos, 2, force=True, progress=False)
    assert (photos / "a_x2.png").read_bytes() == kept
    out = photos / "sr"  # -o inside the input folder: a rerun walks past it
    for _ in range(2):
        written = upscale_files(Bicubic(), [photos], out, 2, force=True, progress=False)
        assert sorted(p.name for p in written) == ["a_x2.png", "a_x2_x2.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a_x2.png", "a_x2_x2.png"]


@pytest.mark.parametrize("names", [("a.png", "a.jpg"), ("photo.png", "Photo.PNG")])
def test_two_inputs_with_one_output_name_are_refused_before_anything_is_written(tmp_path, names):
    for name in names:
        Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(tmp_path / name, format="PNG")
    first, second = sorted(tmp_path / n for n in names)
    target = tmp_path / "out" / f"{second.stem}_x2.png"
    with pytest.raises(ImageError, match="^" + re.escape(f"{first} and {second} would both be written to {target} ")):
        upscale_files(Bicubic(), [first, second], tmp_path / "out", 2, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_output_write_that_fails_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (old,) = upscale_files(Bicubic(), [tmp_path / "a.png"], tmp_path / "out", 2, progress=False)
    before = old.read_bytes()
    Image.fromarray(np.full((8, 10, 3), 200, np.uint8)).save(tmp_path / "a.png")

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lit_sr.upscale.os.replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        upscale_files(Bicubic(), [tmp_path / "a.png"], tmp_path / "out", 2, force=True, progress=False)
    assert old.read_bytes() == before and [p.name for p in old.parent.iterdir()] == ["a_x2.png"]


def test_folders_are_walked_and_mirrored(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for rel in ("x.png", "sub/y.jpg"):
        Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).save(tmp_path / "in" / rel)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    written = upscale_files(Bicubic(), [tmp_path / "in"], tmp_path / "out", 4, progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["sub/y_x4.png", "x_x4.png"]
    assert Image.open(tmp_path / "out" / "sub" / "y_x4.png").size == (64, 48)


def test_export_of_a_trained_model_matches_within_1e_4(trained, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    main(["export", str(trained), "--onnx", str(out), "--scale", "2"])
    method = load_method(str(trained)).eval()
    for h, w in ((33, 47), (64, 20)):
        lr = torch.rand(1, 1, h, w)
        (sr,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"lr": lr.numpy()})
        with torch.no_grad():
            assert np.abs(sr - method.sr_forward(lr, 2).numpy()).max() < 1e-4


# ---- tiling decisions: what is measured, what runs whole, what the flags say ---------------------------------
def _tiny_drn():
    """DRN-S x4's graph (RCABs with channel attention) at one block of 4 features, random weights."""
    from lit_sr.methods.drn import DRN

    torch.manual_seed(0)
    return DRN(variant="drn_small_x4", net={"n_blocks": 1, "n_feats": 4}).eval()


def _not_measured(scale):
    raise AssertionError("receptive_radius was measured")


def test_whole_image_network_runs_untiled_by_default_and_tiles_only_when_asked(monkeypatch):
    method = _tiny_drn()
    # global pooling needs no (2-minute) probe
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: pytest.fail("the receptive radius was probed"))
    x = torch.rand(1, 3, 80, 60)
    whole = super_resolve_tiled(method, x, 4, tile=0)
    with pytest.warns(TilingWarning, match=r"DRN's output depends on the whole image.*--tile 0.*--tile-overlap"):
        default = super_resolve_tiled(method, x, 4, tile=40)
    assert torch.equal(default, whole)
    # an explicit overlap is honoured, and the result then really differs: the default's choice matters
    with pytest.warns(TilingWarning, match=r"approximate at the tile seams"):
        tiled = super_resolve_tiled(method, x, 4, tile=40, overlap=4)
    assert tiled.shape == whole.shape and (tiled - whole).abs().max() > 1e-4


def test_an_unbounded_radius_runs_untiled(monkeypatch):
    method = Bicubic()
    monkeypatch.setattr(method, "receptive_radius", lambda scale: None)  # no end inside the largest probe
    calls = []
    monkeypatch.setattr("lit_sr.upscale.tiled_forward", lambda *a, **k: calls.append(a))
    x = torch.rand(1, 1, 40, 30, dtype=torch.float64)
    with pytest.warns(TilingWarning, match=r"depends on the whole image \(global pooling, or a reach past 768"):
        out = super_resolve_tiled(method, x, 2, tile=16)
    assert calls == [] and torch.equal(out, super_resolve_tiled(method, x, 2, tile=0))


def test_an_image_within_one_tile_is_not_measured(monkeypatch, tmp_path):
    method = Bicubic()
    monkeypatch.setattr(method, "receptive_radius", _not_measured)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "small.png")
    (out,) = upscale_files(method, [tmp_path / "small.png"], tmp_path / "out", 2, tile=30, progress=False)
    assert Image.open(out).size == (60, 40)


def test_a_tile_smaller_than_the_receptive_field_grows_and_stays_exact(monkeypatch):
    method = Bicubic()
    monkeypatch.setattr(method, "receptive_radius", lambda scale: 10)
    x = torch.rand(1, 1, 70, 60, dtype=torch.float64)
    with pytest.warns(TilingWarning, match=r"--tile 16 is too small .* using --tile 52"):
        out = super_resolve_tiled(method, x, 2, tile=16)
    assert (out - super_resolve_tiled(method, x, 2, tile=0)).abs().max() < 1e-12


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--tile", "16", "--tile-overlap", "8"], r"--tile-overlap 8 leaves a core under 32 px in --tile 16 tiles.*"
                                                  r"--tile 48 or more"),
        (["--tile", "40", "--tile-overlap", "19"], r"--tile-overlap 19 leaves a core under 32 px in --tile 40 tiles"),
        (["--tile", "-1"], r"--tile -1: the tile size must be >= 0"),
        (["--tile-overlap", "-2"], r"--tile-overlap -2: the overlap must be >= 0"),
    ],
)
def test_bad_tile_flags_are_one_line_naming_the_flags(flags, pattern, tmp_path, capsys):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    args = ["upscale", "bicubic", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--scale", "2", *flags]
    _fails(capsys, args, rf"^lit-sr: error: {pattern}")
    assert not (tmp_path / "o").exists()  # refused before any work


def _missing_device() -> str:
    """A CUDA device this machine does not have (cuda itself when torch sees no GPU)."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("kind", ["missing", "not a name"])
def test_a_device_this_machine_lacks_is_one_error_listing_what_it_has(kind, tmp_path):
    device = _missing_device() if kind == "missing" else "foo"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    pattern = rf"^--device {device} is (not available on this machine|not a device name).*has: cpu"
    with pytest.raises(ConfigError, match=pattern):
        check_device(device)
    with pytest.raises(ConfigError, match=pattern):
        upscale_files(Bicubic(), [tmp_path / "x.png"], tmp_path / "o", 2, progress=False, device=device)
    assert not (tmp_path / "o").exists()
    assert check_device("cpu") == torch.device("cpu")


def test_upscale_command_reports_a_missing_device_in_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    args = ["upscale", "bicubic", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--scale", "2"]
    _fails(capsys, [*args, "--device", _missing_device()], r"^lit-sr: error: --device .* has: cpu")


def _with_orientation(image: Image.Image, path, orientation: int = 6) -> None:
    exif = image.getexif()
    exif[0x0112] = orientation  # 6: the camera was turned 90 degrees clockwise; viewers rotate it upright
    image.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))


def test_jpeg_exif_orientation_is_applied(tmp_path):
    from PIL import ImageOps

    rgb = np.zeros((12, 20, 3), np.uint8)
    rgb[:4, :6] = (255, 0, 0)  # a red block top-left: where it lands shows the rotation
    _with_orientation(Image.fromarray(rgb), tmp_path / "phone.jpg")
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "phone.jpg")), dtype=np.float64) / 255
    assert upright.shape == (20, 12, 3)
    assert np.array_equal(read_picture(tmp_path / "phone.jpg").pixels, upright)
    (out,) = upscale_files(Bicubic(), [tmp_path / "phone.jpg"], tmp_path / "out", 2, progress=False)
    got = np.asarray(Image.open(out))
    assert got.shape == (40, 24, 3)
    assert got[:10, -6:, 0].mean() > 200 and got[:10, :6, 0].mean() < 50  # red block now top-right


def test_16_bit_exif_orientation_is_applied(tmp_path):
    deep = np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 250
    _with_orientation(Image.fromarray(deep), tmp_path / "deep.png")
    picture = read_picture(tmp_path / "deep.png")
    assert picture.bits == 16
    assert np.array_equal(picture.pixels[..., 0], np.rot90(deep, -1) / 65535)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("bits", "channels"), [(16, 3), (16, 4), (8, 3), (8, 4)])
def test_a_tiff_is_turned_upright_by_its_orientation_tag_and_keeps_its_bits(tmp_path, orientation, bits, channels):
    import tifffile

    from lit_sr.upscale import _UPRIGHT

    top = 2**bits - 1
    stored = (np.random.default_rng(orientation).random((6, 10, channels)) * top).astype(f"uint{bits}")
    tag = [(274, "H", 1, orientation, True)]  # TIFF Orientation
    tifffile.imwrite(tmp_path / "scan.tif", stored, photometric="rgb", extrasamples=[2][: channels - 3], extratags=tag)
    picture = read_picture(tmp_path / "scan.tif")
    upright = _UPRIGHT.get(orientation, lambda a: a)(stored) / top  # as ImageOps.exif_transpose turns a photo
    assert picture.bits == bits and picture.pixels.shape == (*upright.shape[:2], 3)
    assert np.array_equal(picture.pixels, upright[..., :3])
    assert (picture.alpha is None) if channels == 3 else np.array_equal(picture.alpha, upright[..., 3])


def test_16_bit_grey_tiffs_keep_16_bits_whatever_their_photometric_and_alpha(tmp_path):
    import tifffile

    grey = (np.arange(6 * 10, dtype=np.uint16).reshape(6, 10) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")  # 0 is white
    picture = read_picture(tmp_path / "white.tif")
    assert picture.bits == 16 and np.array_equal(picture.pixels[..., 0], (65535 - grey) / 65535)
    alpha = np.full_like(grey, 40000)
    tifffile.imwrite(tmp_path / "ga.tif", np.stack([grey, alpha], -1), photometric="minisblack", extrasamples=[2])
    picture = read_picture(tmp_path / "ga.tif")  # Pillow cannot open this one
    assert picture.bits == 16 and np.array_equal(picture.pixels[..., 0], grey / 65535)
    assert np.array_equal(picture.alpha, alpha / 65535)


def test_a_grey_palette_picture_stays_grey(tmp_path):
    grey = (np.arange(8 * 10) * 3).astype(np.uint8).reshape(8, 10)
    Image.fromarray(grey).convert("P").save(tmp_path / "g.png")
    (out,) = upscale_files(Bicubic(), [tmp_path / "g.png"], tmp_path / "out", 2, progress=False)
    assert Image.open(out).mode == "L" and Image.open(out).size == (20, 16)


def test_16_bit_grey_that_only_pillow_decodes_keeps_16_bits(tmp_path, monkeypatch):
    grey = (np.arange(6 * 10, dtype=np.uint16).reshape(6, 10) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    monkeypatch.setattr(cv2, "imdecode", lambda *args: None)  # OpenCV cannot decode it: Pillow reads it
    picture = read_picture(tmp_path / "g.png")
    assert picture.bits == 16 and np.array_equal(picture.pixels[..., 0], grey / 65535)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["palette", "cmyk"])
def test_a_palette_or_cmyk_tiff_is_turned_upright_by_its_orientation_tag(tmp_path, kind, orientation):
    import tifffile

    from lit_sr.upscale import _UPRIGHT

    red = np.zeros((12, 20), bool)
    red[:4, :6] = True  # a red block top-left as stored: where it lands shows the turn
    tag = [(274, "H", 1, orientation, True)]
    if kind == "palette":
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, 1] = (65535, 0, 0)
        tifffile.imwrite(tmp_path / "scan.tif", red.astype(np.uint8), photometric="palette", colormap=colormap,
                         extratags=tag)  # fmt: skip
    else:
        ink = np.zeros((12, 20, 4), np.uint8)
        ink[red] = (0, 255, 255, 0)  # no cyan, full magenta and yellow: red
        tifffile.imwrite(tmp_path / "scan.tif", ink, photometric="separated", extratags=tag)
    picture = read_picture(tmp_path / "scan.tif")
    upright = _UPRIGHT.get(orientation, lambda a: a)(red)
    expected = np.stack([np.ones_like(upright), ~upright, ~upright], -1) if kind == "cmyk" else upright[..., None]
    assert picture.pixels.shape == (*upright.shape, 3)
    assert np.array_equal(picture.pixels[..., :1] if kind == "palette" else picture.pixels, expected)


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "file").write_text("a file, not a folder")
    method = Bicubic()
    def no_work(*args):
        raise AssertionError("an image was upscaled before the folder was checked")

    monkeypatch.setattr(method, "upscale_rgb", no_work)
    with pytest.raises(UserError, match=rf"^-o {tmp_path / 'file' / 'out'}: cannot write there .*choose a folder"):
        upscale_files(method, [tmp_path / "x.png"], tmp_path / "file" / "out", 2, progress=False)
    assert writable_folder(tmp_path / "new" / "out", "--out") == tmp_path / "new" / "out"
    assert list((tmp_path / "new" / "out").iterdir()) == []  # the probe file is gone

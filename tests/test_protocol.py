"""The evaluation protocol: MATLAB bicubic, MATLAB rgb2ycbcr, per-image PSNR/SSIM, the published bicubic table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from lit_sr.data.color import rgb_to_y, rgb_to_ycbcr, to_y, ycbcr_to_rgb
from lit_sr.data.resize import imresize
from lit_sr.metrics import PSNRY, SSIMY, psnr_y, ssim_y

# Keys cubic (a = -0.5) at the distances that occur for x2 / x1/2, worked out by hand:
# cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125, cubic(1.75) = -0.0234375.
UP2_WEIGHTS = [-0.0703125, 0.8671875, 0.2265625, -0.0234375]  # pixels k-1, k, k+1, k+2 for output at k + 0.25
DOWN2_WEIGHTS = [
    -0.01171875,
    -0.03515625,
    0.11328125,
    0.43359375,
    0.43359375,
    0.11328125,
    -0.03515625,
    -0.01171875,
]


def test_output_sizes_are_matlab_ceil():
    x = torch.rand(1, 1, 31, 17, dtype=torch.float64)
    assert imresize(x, 1 / 3).shape[-2:] == (11, 6)
    assert imresize(x, 1 / 4).shape[-2:] == (8, 5)
    assert imresize(x, 2).shape[-2:] == (62, 34)
    assert imresize(x, 0.7).shape[-2:] == (22, 12)
    assert imresize(x, size=(40, 20)).shape[-2:] == (40, 20)
    assert imresize(torch.rand(300, 300, dtype=torch.float64), 1 / 3).shape == (100, 100)


def test_upscale_x2_interior_weights_and_mirrored_border():
    x = torch.rand(1, 1, 1, 12, dtype=torch.float64)
    out = imresize(x, (1, 2))[0, 0, 0]
    # output 2k+1 (0-based) lies 0.25 right of input k: weights on k-1, k, k+1, k+2
    for k in range(1, 9):
        expected = sum(w * x[0, 0, 0, k - 1 + i] for i, w in enumerate(UP2_WEIGHTS))
        assert out[2 * k + 1].item() == pytest.approx(expected.item(), abs=1e-12)
    # first output (0.25 left of input 0) with symmetric padding: 1.09375 x0 - 0.09375 x1
    assert out[0].item() == pytest.approx((1.09375 * x[..., 0] - 0.09375 * x[..., 1]).item(), abs=1e-12)


def test_downscale_half_uses_the_antialiased_kernel():
    x = torch.rand(1, 1, 1, 24, dtype=torch.float64)
    out = imresize(x, (1, 0.5))[0, 0, 0]
    for i in range(2, 10):  # output i covers inputs 2i-3 .. 2i+4 (0-based)
        expected = sum(w * x[0, 0, 0, 2 * i - 3 + j] for j, w in enumerate(DOWN2_WEIGHTS))
        assert out[i].item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 1 / 8, 2, 3, 4, 8, 0.7, 1.5])
def test_constants_stay_constant_and_linear_ramps_stay_linear(scale):
    const = torch.full((2, 1, 48, 40), 0.3, dtype=torch.float64)
    torch.testing.assert_close(imresize(const, scale), torch.full_like(imresize(const, scale), 0.3))
    if scale > 1:  # the cubic kernel reproduces linear functions away from the border
        ramp = torch.arange(40, dtype=torch.float64).expand(1, 1, 8, 40).contiguous()
        out = imresize(ramp, scale)[0, 0, 0]
        border = 3 * int(np.ceil(scale))  # outputs whose kernel reaches the mirrored border
        diffs = out[border:-border].diff()
        torch.testing.assert_close(diffs, torch.full_like(diffs, 1 / scale))


def test_batched_float32_differentiable():
    x = torch.rand(3, 2, 20, 24, dtype=torch.float64, requires_grad=True)
    out = imresize(x, 1 / 2)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    single = imresize(x[1:2, 1:2].detach(), 1 / 2)
    torch.testing.assert_close(out[1:2, 1:2].detach(), single)
    torch.testing.assert_close(
        imresize(x.detach().float(), 3), imresize(x.detach(), 3).float(), atol=1e-5, rtol=0
    )
    with pytest.raises(TypeError, match="float tensor"):
        imresize(torch.zeros(4, 4, dtype=torch.uint8), 2)


def test_rgb2ycbcr_is_matlab_bt601_studio_range():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)[
        :, :, None, None
    ]
    y = rgb_to_y(rgb).flatten() * 255
    torch.testing.assert_close(y, torch.tensor([235.0, 16.0, 16 + 65.481], dtype=torch.float64))
    ycc = rgb_to_ycbcr(rgb)[:, :, 0, 0] * 255
    torch.testing.assert_close(ycc[0], torch.tensor([235.0, 128.0, 128.0], dtype=torch.float64))
    img = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(img)), img)
    gray = torch.rand(1, 1, 4, 4)
    assert to_y(gray) is gray  # a grey image is its own Y, full range


def test_psnr_is_per_image_on_8_bits_with_shave():
    hr = torch.full((2, 1, 20, 20), 128 / 255, dtype=torch.float64)
    sr = hr.clone()
    sr[0] += 1 / 255  # MSE 1 grey level^2 -> 48.1308 dB
    sr[1, :, 5:15, 5:15] += 0.4 / 255  # below half a grey level: rounds back to the HR values
    sr[1, :, 0, :] = 0  # only in the border: shaved
    psnr = psnr_y(sr, hr, shave=2)
    assert psnr[0].item() == pytest.approx(10 * np.log10(255**2), abs=1e-9)
    assert torch.isinf(psnr[1])
    metric = PSNRY(shave=2)
    a = hr.clone()
    a[:, :, 2:-2, 2:-2] += 2 / 255  # MSE 4
    b = hr.clone()
    b[:, :, 2:-2, 2:-2] += 4 / 255  # MSE 16
    metric.update(a[:1], hr[:1])
    metric.update(b[:1], hr[:1])
    expected = np.mean([10 * np.log10(255**2 / 4), 10 * np.log10(255**2 / 16)])  # not the PSNR of MSE 10
    assert metric.compute().item() == pytest.approx(expected, abs=1e-9)
    assert metric._reductions["values"].__name__ == "dim_zero_cat"  # DDP gathers per-image values


def test_ssim_index_matches_scikit_image_gaussian_ssim(data_root):
    from PIL import Image

    hr = torch.from_numpy(
        np.asarray(Image.open(data_root / "Set5" / "butterfly.png"), dtype=np.float64) / 255
    )
    hr_y = to_y(hr.permute(2, 0, 1)[None])[..., :255, :255]  # modcrop to x3
    sr_y = imresize(imresize(hr_y, 1 / 3), 3)
    ours = ssim_y(sr_y, hr_y, shave=3).item()
    a = torch.round(sr_y.clamp(0, 1) * 255)[0, 0, 3:-3, 3:-3].numpy()
    b = torch.round(hr_y * 255)[0, 0, 3:-3, 3:-3].numpy()
    ref = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ours == pytest.approx(ref, abs=1e-9)
    matlab = ssim_y(sr_y, hr_y, shave=3, variant="matlab").item()
    assert matlab != ours and matlab == pytest.approx(ours, abs=0.01)
    assert ssim_y(hr_y, hr_y, shave=3).item() == pytest.approx(1.0)
    metric = SSIMY(shave=3)
    metric.update(sr_y, hr_y)
    assert metric.compute().item() == pytest.approx(ours)


def test_matlab_ssim_equals_the_2d_window_with_replicate_padding():
    """The separable filter in ``ssim_y`` is the 11x11 window of MATLAB's ``ssim``, written out here in 2-D."""
    torch.manual_seed(0)
    hr_y = torch.rand(2, 1, 40, 37, dtype=torch.float64)
    sr_y = (hr_y + 0.05 * torch.randn_like(hr_y)).clamp(0, 1)
    x, y = (torch.round(t * 255)[..., 2:-2, 2:-2] for t in (sr_y, hr_y))
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def blur(t):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(t, (5,) * 4, mode="replicate"), window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    ours = ssim_y(sr_y, hr_y, shave=2, variant="matlab")
    assert ours.shape == (2,)
    assert torch.allclose(ours, ref.flatten(1).mean(1), rtol=0, atol=1e-12)


# Published bicubic PSNRs (VDSR Table 3 for x2-x4, LapSRN Table 4 for x8). Our Set14 has bridge as a grey image used
# as its own Y, which reproduces the VDSR numbers; the LapSRN x8 row converted it as RGB (+0.1 dB on the mean), so
# its 23.19 is 23.09 here (docs/methods/README.md). Set14 x2 and x3 come out about 0.01 dB low: tolerance 0.015.
PUBLISHED_PSNR = {
    "Set5": {2: 33.66, 3: 30.39, 4: 28.42, 8: 24.39},
    "Set14": {2: 30.24, 3: 27.55, 4: 26.00, 8: 23.09},
}
# Regression values: what this code computes (PSNR, SSIM ssim_index), to 1e-4. The published SSIMs differ by up to
# 0.0009 at x2-x4 (Set14 x4: 0.7018 here, 0.7027 printed) and 0.005 at x8: see the README's protocol section.
OURS = {
    "Set5": {2: (33.6556, 0.92965), 3: (30.3901, 0.86808), 4: (28.4197, 0.81030), 8: (24.3898, 0.65705)},
    "Set14": {2: (30.2295, 0.86855), 3: (27.5397, 0.77357), 4: (25.9997, 0.70183), 8: (23.0926, 0.56267)},
}


def test_lit_sr_benchmark_reproduces_the_published_bicubic_table(data_root, tmp_path, monkeypatch, capsys):
    from lit_sr.cli import main

    monkeypatch.setenv("LIT_SR_DATA", str(data_root))
    args = ["benchmark", "bicubic", "--data", "Set5", "Set14", "--scales", "2", "3", "4", "8", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "| Set5 | bicubic | 33.66 / 0.929" in capsys.readouterr().out
    payload = json.loads((tmp_path / "results.json").read_text())
    assert set(payload["meta"]) >= {
        "method",
        "checkpoint",
        "config",
        "git_commit",
        "protocol",
        "ssim_variant",
        "date",
    }
    assert payload["meta"]["method"] == "bicubic" and payload["meta"]["ssim_variant"] == "ssim_index"
    for dataset, row in OURS.items():
        for scale, (psnr, ssim) in row.items():
            cell = payload["results"][dataset][f"x{scale}"]
            published = PUBLISHED_PSNR[dataset][scale]
            tolerance = 0.015 if (dataset, scale) in (("Set14", 2), ("Set14", 3)) else 0.01
            assert cell["psnr_y"] == pytest.approx(published, abs=tolerance), (dataset, scale)
            assert cell["psnr_y"] == pytest.approx(psnr, abs=1e-4), (dataset, scale)
            assert cell["ssim_y"] == pytest.approx(ssim, abs=1e-4), (dataset, scale)
            assert cell["n_images"] == (5 if dataset == "Set5" else 14)
    assert (tmp_path / "results.md").read_text().count("| Set14 | bicubic |") == 1

"""Tests for ddbench.evaluation.dc_augment: DC's evaluation augmentation against hand-built cases.

Expected outputs are built independently: crops by numpy padding and slicing, scales by the
reference recipe (``F.interpolate`` then a zero canvas), rotations by
``scipy.ndimage.rotate`` (what the reference calls) and by torchvision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy.ndimage import rotate as scipy_rotate
from torchvision.transforms import InterpolationMode

from ddbench.errors import DDBenchError
from ddbench.evaluation.dc_augment import (
    DC_OPS,
    DCAugParams,
    _rotate,
    _scale,
    dc_augment,
    dc_strategy,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def crop_by_hand(img: np.ndarray, means, sy: int, sx: int) -> np.ndarray:
    """out[y, x] = img[y + sy, x + sx], channel mean where that is off the image."""
    c, h, w = img.shape
    p = 8
    canvas = np.stack([np.full((h + 2 * p, w + 2 * p), m, dtype=np.float32) for m in means])
    canvas[:, p : p + h, p : p + w] = img
    return canvas[:, p + sy : p + sy + h, p + sx : p + sx + w]


def scale_by_hand(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The reference recipe: nearest resize, centred on a zero square, centre window."""
    c, H, W = img.shape
    tmp = F.interpolate(img[None], [h, w])[0]
    side = max(h, w, H, W)
    canvas = torch.zeros(c, side, side)
    r, q = int((side - h) / 2), int((side - w) / 2)
    canvas[:, r : r + h, q : q + w] = tmp
    r, q = int((side - H) / 2), int((side - W) / 2)
    return canvas[:, r : r + H, q : q + W]


def rotate_by_scipy(img: np.ndarray, angle: int, cval: float) -> np.ndarray:
    out = scipy_rotate(img, angle=angle, axes=(-2, -1), cval=cval)
    r = int((out.shape[-2] - img.shape[-2]) / 2)
    q = int((out.shape[-1] - img.shape[-1]) / 2)
    return out[:, r : r + img.shape[-2], q : q + img.shape[-1]]


def test_none_and_empty_strategy_are_identity():
    x = torch.randn(4, 3, 8, 8)
    assert dc_augment(x, "none", gen(0)) is x
    assert dc_augment(x, "", gen(0)) is x


def test_unknown_op_is_one_line_error():
    with pytest.raises(DDBenchError) as e:
        dc_augment(torch.zeros(2, 1, 8, 8), "crop_flip", gen(0))
    msg = str(e.value)
    assert "\n" not in msg and "'flip'" in msg
    assert "crop, noise, rotate, scale" in msg


def test_bad_params_rejected():
    with pytest.raises(DDBenchError):
        DCAugParams(scale=1.5)


def test_crop_moves_single_pixel_and_fills_with_channel_mean():
    n, h = 400, 12
    x = torch.zeros(n, 2, h, h)
    x[:, 0] = 1.0
    x[:, 1] = -2.0
    x[:, :, 6, 5] = 7.0  # the single marked pixel
    means = x.mean(dim=(0, 2, 3)).tolist()
    out = dc_augment(x, "crop", gen(1)).numpy()
    shifts = set()
    for i in range(n):
        ys, xs = np.nonzero(out[i, 0] == 7.0)
        dy, dx = int(ys[0]) - 6, int(xs[0]) - 5  # where the pixel moved
        assert len(ys) == 1 and -3 <= dy <= 4 and -3 <= dx <= 4
        np.testing.assert_array_equal(out[i], crop_by_hand(x[i].numpy(), means, -dy, -dx))
        shifts.add((dy, dx))
    # the reference's offset is randint over {0..2*crop-1}: content moves by -3..+4
    assert {d for d, _ in shifts} == set(range(-3, 5)) == {d for _, d in shifts}


def test_scale_matches_reference_recipe_for_every_size():
    x = torch.randn(1, 2, 9, 13)
    for h in range(6, 12):
        for w in range(6, 12):
            got = _scale(x, torch.tensor([h]), torch.tensor([w]))[0]
            torch.testing.assert_close(got, scale_by_hand(x[0], h, w), rtol=0, atol=0)


def test_scale_preserves_shape_and_fills_with_zero():
    x = torch.full((64, 3, 32, 32), 5.0)
    out = dc_augment(x, "scale", gen(2))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) == {0.0, 5.0}  # zero fill, not the mean


@pytest.mark.parametrize("shape", [(28, 28), (32, 32), (9, 13)])
def test_rotate_matches_scipy(shape):
    x = torch.randn(3, 2, *shape)
    for angle in (-45, -30, -7, 0, 1, 25, 44):
        got = _rotate(x, torch.full((3,), angle), 0.25)
        for i in range(3):
            want = rotate_by_scipy(x[i].numpy(), angle, 0.25)
            np.testing.assert_allclose(got[i].numpy(), want, atol=1e-5)


def test_rotate_by_zero_is_identity_and_fill_is_mean_of_channel_means():
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(_rotate(x, torch.zeros(2), 9.0), x, atol=1e-6, rtol=0)
    x = torch.stack([torch.full((16, 16), v) for v in (1.0, 2.0, 6.0)])[None].repeat(120, 1, 1, 1)
    out = dc_augment(x, "rotate", gen(3))
    corners = out[:, :, 0, 0]
    turned = (corners != x[:, :, 0, 0]).any(1)
    assert turned.sum() > 100
    torch.testing.assert_close(corners[turned], torch.full_like(corners[turned], 3.0))


def test_rotate_by_drawn_angle_matches_torchvision():
    """Each output is torchvision's rotation of the blob by some integer angle in
    [-45, 44] (plus scipy's half-pixel shift when the enlarged size minus H is odd), away from the
    fill border, where scipy's 'constant' mode and bilinear padding differ by half a pixel."""
    h = 33
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij")
    blob = torch.exp(-((yy - 10.0) ** 2 + (xx - 22.0) ** 2) / 18.0)[None]
    x = blob[None].repeat(40, 1, 1, 1)
    cval = float(x.mean())
    angles = list(range(-50, 51))
    cands = []
    for a in angles:
        half = 0.5 * (
            (int(h * (abs(math.cos(math.radians(a))) + abs(math.sin(math.radians(a)))) + 0.5) - h)
            % 2
        )
        cands.append(
            TF.affine(
                blob,
                angle=-a,
                translate=[half, half],
                scale=1.0,
                shear=[0.0, 0.0],
                interpolation=InterpolationMode.BILINEAR,
                fill=[cval],
            )
        )
    cands = torch.stack(cands).flatten(1)
    inside = ((yy - 16.0) ** 2 + (xx - 16.0) ** 2 <= 14.0**2).flatten()  # never off the source
    out = dc_augment(x, "rotate", gen(4)).flatten(1)
    err = (out[:, None, inside] - cands[None, :, inside]).abs().amax(-1)
    best = err.argmin(1)
    assert err.min(1).values.max() < 0.035
    drawn = {angles[i] for i in best.tolist()}
    assert min(drawn) >= -45 and max(drawn) <= 44 and len(drawn) > 20


def test_noise_std():
    out = dc_augment(torch.zeros(256, 3, 32, 32), "noise", gen(5))
    assert abs(out.std().item() - 0.001) < 2e-5 and abs(out.mean().item()) < 1e-5


def test_each_image_gets_exactly_one_op_uniformly():
    """MNIST strategy: every output is exactly one of the enumerated crops, scales or
    rotations (built by hand, with ranges wider than the reference's), and the parameters
    matched lie in the reference's ranges; ops are drawn about equally often."""
    n, h = 300, 16
    img = torch.rand(2, h, h, generator=gen(6))
    img[1] += 3.0  # different channel means
    x = img[None].repeat(n, 1, 1, 1)
    means = x.mean(dim=(0, 2, 3)).tolist()
    cands, labels = [], []
    for sy in range(-6, 7):
        for sx in range(-6, 7):
            cands.append(torch.from_numpy(crop_by_hand(img.numpy(), means, sy, sx)))
            labels.append(("crop", -4 <= sy <= 3 and -4 <= sx <= 3))
    for sh in range(10, 23):
        for sw in range(10, 23):
            cands.append(scale_by_hand(img, sh, sw))
            labels.append(("scale", 12 <= sh <= 19 and 12 <= sw <= 19))
    for a in range(-50, 51):
        cands.append(torch.from_numpy(rotate_by_scipy(img.numpy(), a, float(np.mean(means)))))
        labels.append(("rotate", -45 <= a <= 44))
    cands = torch.stack(cands).flatten(1)
    out = dc_augment(x, "crop_scale_rotate", gen(7))
    match = torch.cdist(out.flatten(1), cands, compute_mode="donot_use_mm_for_euclid_dist") < 1e-3
    counts = dict.fromkeys(("crop", "scale", "rotate", "identity"), 0)
    for i in range(n):
        hit = [labels[j] for j in match[i].nonzero().view(-1).tolist()]
        assert any(ok for _, ok in hit), f"image {i} matches no in-range single op"
        if torch.equal(out[i], x[i]):
            counts["identity"] += 1
            continue
        ops = {op for op, _ in hit}
        assert len(ops) == 1, f"image {i} matches several ops {ops}"
        counts[ops.pop()] += 1
    assert counts["identity"] < 15
    for op in ("crop", "scale", "rotate"):
        assert 60 <= counts[op] <= 140, counts


def test_op_choice_frequencies_crop_noise():
    x = torch.randint(0, 2, (2000, 1, 8, 8)).float()
    mean = float(x.mean())
    out = dc_augment(x, "crop_noise", gen(8))
    exact = ((out == 0) | (out == 1) | (out == mean)).flatten(1).all(1)  # crop: grid values only
    assert abs(int(exact.sum()) - 1000) < 100


def test_same_seed_same_output_other_seed_differs():
    x = torch.randn(32, 3, 16, 16)
    for s in ("crop_scale_rotate", "crop_noise"):
        a = dc_augment(x, s, gen(9))
        torch.testing.assert_close(a, dc_augment(x, s, gen(9)), rtol=0, atol=0)
        assert not torch.equal(a, dc_augment(x, s, gen(10)))
    assert dc_augment(x, "crop_noise", gen(9)).shape == x.shape
    assert set(DC_OPS) == {"crop", "scale", "rotate", "noise"}


def test_input_not_modified_and_no_grad():
    x = torch.randn(8, 1, 8, 8, requires_grad=True)
    before = x.detach().clone()
    out = dc_augment(x, "crop_scale_rotate", gen(11))
    assert not out.requires_grad
    assert torch.equal(x.detach(), before)


def test_dc_strategy_follows_get_daparam():
    assert dc_strategy("mnist", "convnet", "instancenorm") == "crop_scale_rotate"
    assert dc_strategy("mnist", "convnet", "batchnorm") == "crop_noise"  # BN rule wins
    assert dc_strategy("cifar10", "convnet", "batchnorm") == "crop_noise"
    assert dc_strategy("cifar10", "convnet", "instancenorm") == "none"
    assert dc_strategy("fashionmnist", "convnet", None) == "none"
    assert dc_strategy("svhn", "resnet18", "batchnorm") == "none"

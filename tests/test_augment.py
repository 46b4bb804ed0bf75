"""featmammo.augment: shapes, determinism, each op's effect and range, identity when disabled."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from featmammo.augment import Augment  # noqa: E402
from featmammo.errors import ConfigError  # noqa: E402

OFF = dict(
    rotation=0, translation=0, scale=(1, 1), shear=0, hflip=0, vflip=0, brightness=0, contrast=0
)


def only(**kw):
    return Augment(**{**OFF, **kw}, seed=0)


def _image(h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, h, w, generator=g) * 0.1
    x[:, 10:30, 8:20] += 2.0  # an off-centre bright block so every warp shows
    return x


def test_defaults_follow_the_paper():
    a = Augment()
    assert (a.rotation, a.translation, a.scale, a.shear) == (25.0, 0.1, (0.8, 1.2), 10.0)
    assert (a.hflip, a.vflip, a.brightness, a.contrast) == (0.5, 0.5, 0.2, 0.2)
    d = a.to_dict()
    assert d["scale"] == [0.8, 1.2] and d["seed"] is None
    assert Augment.from_dict(Augment(seed=3).to_dict()).to_dict() == Augment(seed=3).to_dict()


def test_shapes_and_dtype():
    a = Augment(seed=1)
    x = _image()
    assert a(x).shape == x.shape and a(x).dtype == x.dtype
    b = torch.stack([_image(seed=i) for i in range(4)])
    y = a(b)
    assert y.shape == b.shape and y.is_contiguous()
    # each image of a batch gets its own parameters
    same = torch.stack([_image()] * 3)
    out = Augment(seed=2)(same)
    assert not torch.allclose(out[0], out[1])


def test_determinism_with_seed_and_generator():
    x = _image()
    assert torch.equal(Augment(seed=5)(x), Augment(seed=5)(x))
    assert not torch.equal(Augment(seed=5)(x), Augment(seed=6)(x))
    a = Augment(seed=5)
    first, second = a(x), a(x)  # the generator advances
    assert not torch.equal(first, second)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(Augment()(x, generator=g1), Augment(seed=123)(x, generator=g2))
    a.reseed(5)
    assert torch.equal(a(x), first)


def test_identity_when_disabled():
    x = _image()
    assert Augment.disabled().is_identity
    assert torch.equal(Augment.disabled()(x), x)
    assert torch.equal(only()(x), x)


@pytest.mark.parametrize(
    "kw",
    [
        {"rotation": 25.0},
        {"translation": 0.1},
        {"scale": (0.8, 1.2)},
        {"shear": 10.0},
        {"brightness": 0.2},
        {"contrast": 0.2},
    ],
)
def test_each_op_changes_the_image(kw):
    x = _image()
    a = only(**kw)
    changed = sum(not torch.allclose(a(x), x, atol=1e-4) for _ in range(5))
    assert changed >= 4


def test_flips():
    x = _image()
    assert torch.equal(only(hflip=1.0)(x), x.flip(-1))
    assert torch.equal(only(vflip=1.0)(x), x.flip(-2))
    a = only(hflip=0.5)
    n = sum(torch.equal(a(x), x.flip(-1)) for _ in range(200))
    assert 70 < n < 130


def test_parameter_ranges_statistically():
    a = Augment(seed=0)
    draws = [a.sample() for _ in range(2000)]
    angles = [d["angle"] for d in draws]
    assert max(abs(v) for v in angles) <= 25.0 and min(angles) < -23 and max(angles) > 23
    assert all(abs(d["shear"]) <= 10.0 for d in draws)
    assert all(0.8 <= d["scale"] <= 1.2 for d in draws)
    assert all(abs(t) <= 0.1 for d in draws for t in d["translate"])
    assert all(0.8 <= d["contrast"] <= 1.2 and abs(d["brightness"]) <= 0.2 for d in draws)
    assert abs(sum(angles) / len(angles)) < 1.5  # symmetric


def _orientation_deg(img):
    """Principal-axis angle (degrees, image y downwards) of the bright pixels."""
    w = (img - img.min()).clamp_min(0)
    w = torch.where(w > 0.5 * w.max(), w, torch.zeros_like(w))
    h, wd = img.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(wd, dtype=torch.float64), indexing="ij"
    )
    m = w.double().sum()
    cy, cx = (w * yy).sum() / m, (w * xx).sum() / m
    myy = (w * (yy - cy) ** 2).sum() / m
    mxx = (w * (xx - cx) ** 2).sum() / m
    mxy = (w * (yy - cy) * (xx - cx)).sum() / m
    return math.degrees(0.5 * math.atan2(2 * float(mxy), float(mxx - myy)))


def test_rotation_matches_its_parameter():
    bar = torch.zeros(3, 65, 65)
    bar[:, 30:35, 8:57] = 1.0  # horizontal bar through the centre
    a = only(rotation=25.0)
    for _ in range(10):
        p = a.sample()
        out = a.apply(bar, p)[0]
        measured = _orientation_deg(out)
        # the principal axis (measured with y pointing down) follows the sampled angle
        assert abs(measured - p["angle"]) < 2.0, (p["angle"], measured)
        assert abs(measured) <= 27.0


def test_translation_and_photometric_ranges():
    x = torch.zeros(3, 50, 50)
    x[:, 20:30, 20:30] = 1.0
    a = only(translation=0.1)
    for _ in range(20):
        out = a(x)[0]
        ys, xs = torch.nonzero(out > 0.5, as_tuple=True)
        assert (
            abs(ys.double().mean().item() - 24.5) <= 5.5
            and abs(xs.double().mean().item() - 24.5) <= 5.5
        )
    img = _image()
    span = (img.max() - img.min()).item()
    b = only(brightness=0.2)
    for _ in range(20):
        shift = (b(img) - img).mean().item()
        assert abs(shift) <= 0.2 * span + 1e-5
    c = only(contrast=0.2)
    for _ in range(20):
        ratio = (c(img).std() / img.std()).item()
        assert 0.8 - 1e-4 <= ratio <= 1.2 + 1e-4


def test_rejects_bad_config_and_input():
    for kw in (
        {"rotation": -1},
        {"hflip": 1.5},
        {"scale": (1.2, 0.8)},
        {"contrast": 1.0},
        {"interpolation": "cubic"},
        {"translation": 2},
    ):
        with pytest.raises(ConfigError):
            Augment(**kw)
    with pytest.raises(ConfigError):
        Augment()(torch.zeros(8, 8))
    with pytest.raises(ConfigError):
        Augment()(torch.zeros(3, 8, 8, dtype=torch.uint8))

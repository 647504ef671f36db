"""Net-surgery math of netspec.surgery, checked against hand values and naive NumPy layers."""
import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.surgery import (bilinear_kernel, bilinear_weights, expand_score, format_report, interp_init,
                             transplant)


def test_bilinear_kernel_hand_values():
    np.testing.assert_allclose(bilinear_kernel(4), np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]))
    np.testing.assert_allclose(bilinear_kernel(3), np.outer([.5, 1, .5], [.5, 1, .5]))
    third = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(bilinear_kernel(5), np.outer(third, third), rtol=1e-6)
    np.testing.assert_allclose(bilinear_kernel(2), np.full((2, 2), .25))
    assert bilinear_kernel(4).dtype == np.float32


def naive_deconv(x, kernel, stride, pad):
    """Transposed convolution of one (H, W) map: scatter each input pixel times the kernel, then crop pad."""
    k = kernel.shape[0]
    h, w = x.shape
    full = np.zeros((stride * (h - 1) + k, stride * (w - 1) + k))
    for i in range(h):
        for j in range(w):
            full[i * stride:i * stride + k, j * stride:j * stride + k] += x[i, j] * kernel
    return full[pad:full.shape[0] - pad, pad:full.shape[1] - pad]


def test_bilinear_kernel_interpolates_linearly():
    # upsampling x2 (k=4, stride 2, pad 1) maps a linear ramp to a linear ramp away from the borders
    ramp = np.add.outer(np.arange(6.0), 2 * np.arange(5.0))
    up = naive_deconv(ramp, bilinear_kernel(4).astype(np.float64), 2, 1)
    assert up.shape == (12, 10)
    interior = up[1:-1, 1:-1]
    np.testing.assert_allclose(np.diff(interior, axis=0), 0.5)
    np.testing.assert_allclose(np.diff(interior, axis=1), 1.0)
    # output pixel y sits at input coordinate (y - 0.5) / 2
    np.testing.assert_allclose(up[5, 4], (5 - 0.5) / 2 + 2 * (4 - 0.5) / 2)


def test_bilinear_weights_diagonal():
    w = bilinear_weights(3, 3, 4)
    assert w.shape == (3, 3, 4, 4)
    for i in range(3):
        for o in range(3):
            expected = bilinear_kernel(4) if i == o else np.zeros((4, 4))
            np.testing.assert_array_equal(w[i, o], expected)
    single = bilinear_weights(2, 1, 3)
    np.testing.assert_array_equal(single[:, 0], [bilinear_kernel(3)] * 2)
    with pytest.raises(NetspecError):
        bilinear_weights(3, 2, 4)


def naive_conv_valid(x, w, b):
    """Cross-correlation of x (C, H, W) with w (O, C, kh, kw), no padding, stride 1."""
    o, c, kh, kw = w.shape
    _, h, wd = x.shape
    out = np.zeros((o, h - kh + 1, wd - kw + 1))
    for y in range(out.shape[1]):
        for z in range(out.shape[2]):
            patch = x[:, y:y + kh, z:z + kw]
            out[:, y, z] = (w * patch).sum(axis=(1, 2, 3)) + b
    return out


def test_transplant_inner_product_to_convolution_is_exact():
    rng = np.random.default_rng(0)
    fc_w = rng.normal(size=(5, 3 * 4 * 4)).astype(np.float32)
    fc_b = rng.normal(size=5).astype(np.float32)
    weights, report = transplant({}, {"fc6": [(5, 3, 4, 4), (5,)]}, {"fc6": [fc_w, fc_b]})
    assert report["coerced"] == [("fc6", 0, "fc6")] and report["copied"] == [("fc6", 1, "fc6")]
    conv_w, conv_b = weights["fc6"]
    assert conv_w.shape == (5, 3, 4, 4)
    x = rng.normal(size=(3, 4, 4))
    ip = fc_w.astype(np.float64) @ x.ravel() + fc_b  # InnerProduct flattens C, H, W
    np.testing.assert_allclose(naive_conv_valid(x, conv_w, conv_b)[:, 0, 0], ip, rtol=1e-6)
    # on a larger input, the convolution at each location is the IP of the window there
    big = rng.normal(size=(3, 6, 7))
    conv = naive_conv_valid(big, conv_w, conv_b)
    np.testing.assert_allclose(conv[:, 1, 2], fc_w @ big[:, 1:5, 2:6].ravel() + fc_b, rtol=1e-5)


def test_transplant_report_and_untouched_layers():
    rng = np.random.default_rng(1)
    old = {
        "conv1": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
        "fc8": [rng.normal(size=(10, 6)), rng.normal(size=10)],      # count differs from the new score
        "gone": [rng.normal(size=(2,))],
    }
    new_shapes = {"conv1_x": [(4, 3, 3, 3), (4,)], "fc8_x": [(21, 6, 1, 1), (21,)], "extra_x": [(2, 2)]}
    new_weights = {"fc8_x": [np.full((21, 6, 1, 1), 7.0), np.full(21, 8.0)], "extra_x": [np.ones((2, 2))]}
    before = {name: [blob.copy() for blob in blobs] for name, blobs in old.items()}
    weights, report = transplant(new_weights, new_shapes, old, suffix="_x")
    np.testing.assert_array_equal(weights["conv1_x"][0], old["conv1"][0].astype(np.float32))
    np.testing.assert_array_equal(weights["conv1_x"][1], old["conv1"][1].astype(np.float32))
    np.testing.assert_array_equal(weights["fc8_x"][0], 7.0)   # skipped: new values kept
    np.testing.assert_array_equal(weights["extra_x"][0], 1.0)
    assert ("conv1", 0, "conv1_x") in report["copied"] and ("conv1", 1, "conv1_x") in report["copied"]
    skipped = {(name, i) for name, i, _ in report["skipped"]}
    assert skipped == {("fc8", 0), ("fc8", 1), ("gone", None)}
    assert len(format_report(report)) == 5
    for name in old:  # inputs untouched
        for a, b in zip(old[name], before[name]):
            np.testing.assert_array_equal(a, b)
    assert new_weights["fc8_x"][0][0, 0, 0, 0] == 7.0


def test_transplant_drops_extra_blobs():
    weights, report = transplant({}, {"a": [(2,)]}, {"a": [np.ones(2), np.ones(3)]})
    assert len(weights["a"]) == 1 and report["skipped"][0][:2] == ("a", 1)


def test_expand_score_zero_and_copy():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 4, 1, 1)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    grown = expand_score({"score": [w, b], "other": [np.ones(1)]}, "score", 5)
    gw, gb = grown["score"]
    assert gw.shape == (5, 4, 1, 1) and gb.shape == (5,)
    np.testing.assert_array_equal(gw[:3], w)
    np.testing.assert_array_equal(gb[:3], b)
    assert not gw[3:].any() and not gb[3:].any()
    copied = expand_score({"score": [w, b]}, "score", 5, init="copy", copy_from=0)["score"]
    np.testing.assert_array_equal(copied[0][3], w[0])
    np.testing.assert_array_equal(copied[1][4], b[0])
    legacy_bias = expand_score({"score": [w, b.reshape(1, 1, 1, 3)]}, "score", 4)["score"][1]
    assert legacy_bias.shape == (1, 1, 1, 4)
    np.testing.assert_array_equal(legacy_bias[0, 0, 0, :3], b)
    with pytest.raises(NetspecError):
        expand_score({"score": [w, b]}, "score", 2)
    with pytest.raises(NetspecError, match="nope"):
        expand_score({"score": [w, b]}, "nope", 5)


def test_interp_init():
    weights = {"upscore": [np.zeros((2, 2, 4, 4), np.float32)], "fc": [np.ones(3)]}
    result = interp_init(weights, ["upscore"])
    np.testing.assert_array_equal(result["upscore"][0][1, 1], bilinear_kernel(4))
    np.testing.assert_array_equal(result["upscore"][0][0, 1], 0)
    assert not weights["upscore"][0].any()  # input untouched
    with pytest.raises(NetspecError, match="square"):
        interp_init({"up": [np.zeros((2, 2, 4, 3))]}, ["up"])
    with pytest.raises(NetspecError, match="missing"):
        interp_init(weights, ["missing"])

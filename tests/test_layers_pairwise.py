"""Pair layers (J. Long's thesis, ch. 4) against NumPy loops over x and Δ.

Pair blob convention: (N, Kh*Kw, H, W), offset Δ = (i - Kh//2, j - Kw//2) in channel
i*Kw + j.  Gradients: finite differences (float64) where the layer is smooth; MIN_SUM
against a loop that sends the upstream gradient to the first minimal term.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec
from netspec.errors import NetspecError
from netspec.prototxt import parse_net
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

FD = dict(eps=1e-5, rtol=1e-5, atol=1e-8)


def rs(seed):
    return np.random.RandomState(seed)


def forward(layer, bottoms):
    return [np.asarray(t) for t in jax.jit(lambda *b: run_layer(layer, list(b)))(*bottoms)]


def window_text(kh, kw):
    return f"window: {kh}" if kh == kw else f"window_h: {kh} window_w: {kw}"


# -- PairTranspose -----------------------------------------------------------------

def ref_transpose(p, kh, kw):
    n, _, h, w = p.shape
    ch, cw = kh // 2, kw // 2
    out = np.zeros_like(p)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for i in range(kh):
                    for j in range(kw):
                        dy, dx = i - ch, j - cw
                        sy, sx = y + dy, x + dx            # x + Δ
                        si, sj = -dy + ch, -dx + cw        # channel of -Δ
                        if 0 <= sy < h and 0 <= sx < w and 0 <= si < kh and 0 <= sj < kw:
                            out[b, i * kw + j, y, x] = p[b, si * kw + sj, sy, sx]
    return out


TRANSPOSE_CASES = [(3, 3, 4, 5), (4, 4, 5, 4), (2, 5, 4, 6), (5, 2, 3, 3), (5, 5, 2, 3), (1, 1, 3, 2)]


@pytest.mark.parametrize("kh,kw,h,w", TRANSPOSE_CASES)
def test_transpose_values(kh, kw, h, w):
    p = rs(0).randn(2, kh * kw, h, w).astype(np.float32)
    layer = make_layer(f'type: "PairTranspose" pair_param {{ {window_text(kh, kw)} }}', [p.shape])
    np.testing.assert_array_equal(forward(layer, [p])[0], ref_transpose(p, kh, kw))


def test_transpose_of_odd_window_is_an_involution_on_the_grid():
    p = rs(1).randn(1, 9, 4, 4).astype(np.float32)
    layer = make_layer('type: "PairTranspose" pair_param { window: 3 }', [p.shape])
    twice = forward(layer, forward(layer, [p]))[0]
    # entries whose x + Δ is on the grid come back unchanged, the others are zero
    np.testing.assert_array_equal(twice, ref_transpose(ref_transpose(p, 3, 3), 3, 3))
    assert np.array_equal(twice[:, 4], p[:, 4])        # Δ = 0


@pytest.mark.parametrize("kh,kw,h,w", [(3, 3, 3, 4), (4, 2, 3, 3)])
def test_transpose_gradients(kh, kw, h, w):
    p = rs(2).randn(1, kh * kw, h, w)
    layer = make_layer(f'type: "PairTranspose" pair_param {{ {window_text(kh, kw)} }}', [p.shape])
    check_layer_grads(layer, [p], **FD)


def test_window_inferred_from_square_channel_count():
    p = rs(3).randn(1, 16, 3, 3).astype(np.float32)
    layer = make_layer('type: "PairTranspose"', [p.shape])
    np.testing.assert_array_equal(forward(layer, [p])[0], ref_transpose(p, 4, 4))


# -- PairCompose -------------------------------------------------------------------

def compose_terms(p1, p2, k1, k2):
    """Per (b, y, x, top channel): the list of (value pairs, indices) terms in δ order."""
    (k1h, k1w), (k2h, k2w) = k1, k2
    n, _, h, w = p1.shape
    kh, kw = k1h + k2h - 1, k1w + k2w - 1
    terms = {}
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for ti in range(kh):
                    for tj in range(kw):
                        big = (ti - kh // 2, tj - kw // 2)             # Δ
                        lst = []
                        for i1 in range(k1h):
                            for j1 in range(k1w):
                                d = (i1 - k1h // 2, j1 - k1w // 2)     # δ
                                r = (big[0] - d[0], big[1] - d[1])     # Δ - δ
                                i2, j2 = r[0] + k2h // 2, r[1] + k2w // 2
                                yy, xx = y + d[0], x + d[1]
                                if not (0 <= i2 < k2h and 0 <= j2 < k2w):
                                    continue
                                if not (0 <= yy < h and 0 <= xx < w):
                                    continue
                                lst.append(((b, i1 * k1w + j1, y, x), (b, i2 * k2w + j2, yy, xx)))
                        terms[(b, ti * kw + tj, y, x)] = lst
    return terms, (n, kh * kw, h, w)


def ref_compose(p1, p2, k1, k2, min_sum):
    terms, shape = compose_terms(p1, p2, k1, k2)
    out = np.zeros(shape)
    for key, lst in terms.items():
        vals = [p1[a] + p2[c] if min_sum else p1[a] * p2[c] for a, c in lst]
        out[key] = (min(vals) if vals else np.inf) if min_sum else sum(vals)
    return out


def ref_min_sum_grads(p1, p2, k1, k2, weights):
    """d sum(weights * top)/d(p1, p2): each top entry's weight goes to its first minimal term."""
    terms, _ = compose_terms(p1, p2, k1, k2)
    g1, g2 = np.zeros_like(p1), np.zeros_like(p2)
    for key, lst in terms.items():
        if not lst:
            continue
        vals = [p1[a] + p2[c] for a, c in lst]
        a, c = lst[int(np.argmin(vals))]      # np.argmin: first minimum
        g1[a] += weights[key]
        g2[c] += weights[key]
    return g1, g2


def compose_layer(k1, k2, shape1, shape2, semiring="SUM_PRODUCT"):
    text = (f'type: "PairCompose" pair_param {{ window_h: {k1[0]} window_w: {k1[1]} '
            f'second_window_h: {k2[0]} second_window_w: {k2[1]} semiring: {semiring} }}')
    return make_layer(text, [shape1, shape2])


COMPOSE_CASES = [((3, 3), (3, 3), 4, 5), ((1, 3), (3, 5), 3, 4), ((3, 1), (1, 1), 4, 2),
                 ((5, 3), (3, 3), 2, 3)]


@pytest.mark.parametrize("semiring", ["SUM_PRODUCT", "MIN_SUM"])
@pytest.mark.parametrize("k1,k2,h,w", COMPOSE_CASES)
def test_compose_values(k1, k2, h, w, semiring):
    r = rs(4)
    p1 = r.randn(2, k1[0] * k1[1], h, w).astype(np.float32)
    p2 = r.randn(2, k2[0] * k2[1], h, w).astype(np.float32)
    layer = compose_layer(k1, k2, p1.shape, p2.shape, semiring)
    got = forward(layer, [p1, p2])[0]
    want = ref_compose(p1.astype(np.float64), p2.astype(np.float64), k1, k2, semiring == "MIN_SUM")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if semiring == "MIN_SUM":
        assert np.isinf(got).any()          # empty minima at the grid's corners are +inf


def test_compose_default_second_window_and_square_inference():
    p1 = rs(5).randn(1, 9, 3, 3).astype(np.float32)
    p2 = rs(6).randn(1, 9, 3, 3).astype(np.float32)
    for text in ('pair_param { window: 3 }', ''):
        layer = make_layer(f'type: "PairCompose" {text}', [p1.shape, p2.shape])
        assert layer.top_shapes() == [(1, 25, 3, 3)]
        np.testing.assert_allclose(forward(layer, [p1, p2])[0],
                                   ref_compose(p1, p2, (3, 3), (3, 3), False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k1,k2,h,w", [((3, 3), (3, 3), 3, 3), ((1, 3), (3, 1), 3, 4)])
def test_compose_sum_product_gradients(k1, k2, h, w):
    r = rs(7)
    p1 = r.randn(1, k1[0] * k1[1], h, w)
    p2 = r.randn(1, k2[0] * k2[1], h, w)
    check_layer_grads(compose_layer(k1, k2, p1.shape, p2.shape), [p1, p2], **FD)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k1,k2,h,w", [((3, 3), (3, 3), 4, 3), ((3, 1), (1, 3), 3, 3)])
def test_compose_min_sum_gradient_goes_to_first_minimum(k1, k2, h, w, ties):
    r = rs(8)
    shape1, shape2 = (2, k1[0] * k1[1], h, w), (2, k2[0] * k2[1], h, w)
    if ties:        # small integers: many equal terms
        p1, p2 = r.randint(0, 2, shape1).astype(np.float64), r.randint(0, 2, shape2).astype(np.float64)
    else:
        p1, p2 = r.randn(*shape1), r.randn(*shape2)
    layer = compose_layer(k1, k2, shape1, shape2, "MIN_SUM")
    with jax.enable_x64(True):
        top_shape = layer.top_shapes()[0]
        weights = r.randn(*top_shape)

        def objective(a, b):
            top = run_layer(layer, [a, b])[0]
            return jnp.sum(jnp.where(jnp.isinf(top), 0, weights * top))
        g1, g2 = jax.jit(jax.grad(objective, argnums=(0, 1)))(p1, p2)
        # empty (+inf) entries still give finite, zero gradients with a plain weighted sum
        h1, h2 = jax.grad(lambda a, b: jnp.sum(weights * run_layer(layer, [a, b])[0]),
                          argnums=(0, 1))(p1, p2)
    w1, w2 = ref_min_sum_grads(p1, p2, k1, k2, weights)
    np.testing.assert_allclose(np.asarray(g1), w1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g2), w2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(h1), w1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(h2), w2, rtol=1e-12, atol=1e-12)


# -- PairRegionLoss ----------------------------------------------------------------

def caffe_bilinear_kernel(u):
    """Caffe's BilinearFiller for a deconvolution of stride u: kernel 2u - u%2 (1-D factor)."""
    k = 2 * u - u % 2
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    return np.array([1 - abs(i / f - c) for i in range(k)])


def upsample_region(region, u):
    """Deconvolve one Kh x Kw region with the bilinear kernel (stride u), crop u//2."""
    kh, kw = region.shape
    kern = caffe_bilinear_kernel(u)
    k = len(kern)
    out = np.zeros(((kh - 1) * u + k, (kw - 1) * u + k))
    for i in range(kh):
        for j in range(kw):
            for a in range(k):
                for b in range(k):
                    out[i * u + a, j * u + b] += region[i, j] * kern[a] * kern[b]
    c = u // 2
    return out[c:c + kh * u, c:c + kw * u]


def ref_region_loss(pred, inst, kh, kw, s, u, min_scale, ignore=255):
    pred = pred.astype(np.float64)
    inst = inst.astype(np.int64)
    n, _, h, w = pred.shape
    height, width = inst.shape[2:]
    o = (s - u) // 2
    total, count = 0.0, 0
    objectness = np.full((n, 1, h, w), float(ignore))
    for b in range(n):
        lab = inst[b, 0]
        for y in range(h):
            for x in range(w):
                py, px = s * y + (s - 1) // 2, s * x + (s - 1) // 2
                if not (py < height and px < width):
                    continue
                m = lab[py, px]
                if m == 0:
                    objectness[b, 0, y, x] = 0
                    continue
                if m == ignore or not 0 < m < 256:
                    continue
                top, left = s * y + o - (kh // 2) * u, s * x + o - (kw // 2) * u
                ys, xs = np.nonzero(lab == m)
                fits = (ys.min() >= top and ys.max() < top + kh * u and
                        xs.min() >= left and xs.max() < left + kw * u)
                side = max((ys.max() - ys.min() + 1) / (kh * u), (xs.max() - xs.min() + 1) / (kw * u))
                if not fits or side < min_scale:
                    continue
                objectness[b, 0, y, x] = 1
                region = upsample_region(pred[b, :, y, x].reshape(kh, kw), u)
                for a in range(kh * u):
                    for c in range(kw * u):
                        qy, qx = top + a, left + c
                        if not (0 <= qy < height and 0 <= qx < width):
                            continue
                        if lab[qy, qx] == ignore or not 0 <= lab[qy, qx] < 256:
                            continue
                        t = float(lab[qy, qx] == m)
                        f = region[a, c]
                        total += -(t * np.log(1 / (1 + np.exp(-f))) + (1 - t) * np.log(1 / (1 + np.exp(f))))
                        count += 1
    return total / max(count, 1), count, objectness


def instance_map(seed, n, height, width, boxes):
    """Background with rectangles of instance ids (later ones on top), some void."""
    r = rs(seed)
    lab = np.zeros((n, 1, height, width), np.float32)
    for b in range(n):
        for k, (hh, ww) in enumerate(boxes):
            y0, x0 = r.randint(0, height - hh + 1), r.randint(0, width - ww + 1)
            lab[b, 0, y0:y0 + hh, x0:x0 + ww] = k + 1
        lab[b, 0, r.randint(height), :3] = 255               # a void streak
    return lab


# (window h, w, stride, upsample, coarse h, w, image H, W, min_scale, boxes)
LOSS_CASES = [
    (3, 3, 2, 2, 4, 5, 8, 10, 0.5, [(3, 4), (5, 2), (1, 1), (8, 9)]),
    (4, 4, 2, 2, 4, 4, 8, 8, 0.0, [(4, 3), (2, 2)]),
    (3, 2, 3, 3, 3, 3, 9, 8, 0.4, [(5, 4), (4, 3), (2, 2)]),
    (3, 3, 2, 3, 4, 4, 7, 9, 0.3, [(4, 5), (3, 3)]),         # upsample != stride (o = -1)
    (2, 3, 4, 2, 3, 3, 11, 12, 0.0, [(3, 4), (2, 2)]),       # o = 1; centres off the image
    (3, 3, 1, 1, 5, 6, 5, 6, 0.0, [(2, 3), (3, 2)]),
]


@pytest.mark.parametrize("kh,kw,s,u,h,w,height,width,min_scale,boxes", LOSS_CASES)
def test_region_loss_matches_full_resolution_reference(kh, kw, s, u, h, w, height, width,
                                                       min_scale, boxes):
    pred = rs(9).randn(2, kh * kw, h, w).astype(np.float32) * 2
    inst = instance_map(10, 2, height, width, boxes)
    text = (f'type: "PairRegionLoss" pair_param {{ {window_text(kh, kw)} stride: {s} '
            f'upsample: {u} min_scale: {min_scale} }}')
    layer = make_layer(text, [pred.shape, inst.shape], num_tops=2)
    loss, obj = forward(layer, [pred, inst])
    want, count, want_obj = ref_region_loss(pred, inst, kh, kw, s, u, min_scale)
    assert count > 0
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_array_equal(obj, want_obj)


def test_region_loss_min_scale_and_custom_ignore_label():
    pred = rs(11).randn(1, 9, 4, 4).astype(np.float32)
    inst = instance_map(12, 1, 8, 8, [(2, 2), (5, 5)])
    inst[inst == 255] = 7                                     # void is 7 here
    inst[0, 0, 0, 0], inst[0, 0, 7, 7] = 300, -3               # not ids: void too
    for min_scale in (0.0, 0.5, 0.9):
        layer = make_layer(f'type: "PairRegionLoss" pair_param {{ window: 3 stride: 2 '
                           f'min_scale: {min_scale} }} loss_param {{ ignore_label: 7 }}',
                           [pred.shape, inst.shape], num_tops=2)
        loss, obj = forward(layer, [pred, inst])
        want, _, want_obj = ref_region_loss(pred, inst, 3, 3, 2, 2, min_scale, ignore=7)
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_array_equal(obj, want_obj)


def test_region_loss_with_nothing_counted_is_zero():
    pred = rs(13).randn(1, 9, 3, 3).astype(np.float32)
    inst = np.zeros((1, 1, 6, 6), np.float32)
    layer = make_layer('type: "PairRegionLoss" pair_param { window: 3 stride: 2 }',
                       [pred.shape, inst.shape])
    assert float(forward(layer, [pred, inst])[0]) == 0.0


@pytest.mark.parametrize("kh,kw,s,u", [(3, 3, 2, 2), (2, 3, 2, 3)])
def test_region_loss_gradients(kh, kw, s, u):
    pred = rs(14).randn(1, kh * kw, 3, 3) * 2
    inst = instance_map(15, 1, 6, 7, [(3, 3), (2, 4)])
    layer = make_layer(f'type: "PairRegionLoss" pair_param {{ {window_text(kh, kw)} stride: {s} '
                       f'upsample: {u} min_scale: 0 }}', [pred.shape, inst.shape])
    check_layer_grads(layer, [pred, inst], wrt_bottoms=[0], **FD)


# -- errors --------------------------------------------------------------------------

@pytest.mark.parametrize("text,shapes,match", [
    ('type: "PairTranspose" pair_param { window: 3 }', [(1, 8, 4, 4)], "8 channels.*3x3.*9"),
    ('type: "PairTranspose" pair_param { window_h: 2 window_w: 3 }', [(1, 5, 4, 4)], "2x3 window needs 6"),
    ('type: "PairTranspose"', [(1, 8, 4, 4)], "not a square"),
    ('type: "PairCompose" pair_param { window: 4 }', [(1, 16, 4, 4)] * 2, "odd windows.*4x4"),
    ('type: "PairCompose" pair_param { window: 3 second_window_h: 3 second_window_w: 2 }',
     [(1, 9, 4, 4), (1, 6, 4, 4)], "odd windows; bottom 1 has a 3x2"),
    ('type: "PairCompose" pair_param { window: 3 }', [(1, 9, 4, 4), (1, 9, 4, 5)], "share N, H and W"),
    ('type: "PairRegionLoss" pair_param { window: 3 }', [(1, 10, 4, 4), (1, 1, 8, 8)], "10 channels"),
    ('type: "PairRegionLoss" pair_param { window: 3 }', [(1, 9, 4, 4), (1, 2, 8, 8)], "instance map"),
])
def test_bad_inputs_give_one_line_errors_naming_the_layer(text, shapes, match):
    with pytest.raises(NetspecError, match=match) as info:
        make_layer(text, shapes)
    assert '"under_test"' in str(info.value) and "\n" not in str(info.value)


# -- in a net ------------------------------------------------------------------------

NET = '''name: "pairs"
layer { name: "in" type: "Input" top: "data" top: "inst"
  input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "pair_a" type: "Convolution" bottom: "data" top: "pair_a"
  convolution_param { num_output: 9 kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "pair_b" type: "Convolution" bottom: "data" top: "pair_b"
  convolution_param { num_output: 9 kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "tr" type: "PairTranspose" bottom: "pair_a" top: "pair_t" pair_param { window: 3 } }
layer { name: "comp" type: "PairCompose" bottom: "pair_t" bottom: "pair_b" top: "pair_5" pair_param { window: 3 } }
layer { name: "loss" type: "PairRegionLoss" bottom: "pair_5" bottom: "inst" top: "loss" top: "obj"
  pair_param { window: 5 stride: 2 min_scale: 0 } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 1 kernel_size: 2 stride: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "obj_loss" type: "SigmoidCrossEntropyLoss" bottom: "score" bottom: "obj" top: "obj_loss"
  loss_param { ignore_label: 255 } }
'''


def test_pair_layers_in_a_net_forward_backward():
    net = netspec.Net(parse_net(NET), phase=netspec.TRAIN)
    r = rs(16)
    net.blobs["data"].data[...] = r.randn(1, 2, 8, 8)
    inst = np.zeros((1, 1, 8, 8), np.float32)
    inst[0, 0, 1:4, 2:6] = 1
    inst[0, 0, 5:8, 0:3] = 2
    net.blobs["inst"].data[...] = inst
    out = net.forward()
    assert np.isfinite(out["loss"]) and out["loss"] > 0 and np.isfinite(out["obj_loss"])
    assert net.blobs["pair_5"].data.shape == (1, 25, 4, 4)
    assert set(np.unique(net.blobs["obj"].data)) <= {0.0, 1.0, 255.0} and (net.blobs["obj"].data == 1).any()
    net.backward()
    for name in ("pair_a", "pair_b", "score"):
        diff = net.params[name][0].diff
        assert np.isfinite(diff).all() and np.abs(diff).sum() > 0, name

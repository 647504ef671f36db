"""SSD's layers (weiliu89/caffe, branch ssd) against NumPy transcriptions of the fork's C++."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec
from netspec.errors import NetspecError
from netspec.layers.ssd import detections
from layer_harness import check_layer_grads, make_layer, run_layer


def randn(shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


# ------------------------------------------------------------ Normalize

def normalize_ref(x, scale, across_spatial, channel_shared, eps):
    """normalize_layer.cpp Forward_cpu, per sample."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1).astype(np.float64)
    out = np.empty_like(x3)
    for i in range(n):
        sq = x3[i] ** 2
        if across_spatial:
            out[i] = x3[i] / math.sqrt(sq.sum() + eps)
        else:
            out[i] = x3[i] / np.sqrt(eps + sq.sum(0))[None, :]
        out[i] *= scale if channel_shared else np.asarray(scale)[:, None]
    return out.reshape(x.shape)


def normalize_backward_ref(x, g, scale, across_spatial, channel_shared, eps):
    """normalize_layer.cpp Backward_cpu (bottom diff)."""
    n, c = x.shape[:2]
    x3, g3 = x.reshape(n, c, -1).astype(np.float64), g.reshape(n, c, -1).astype(np.float64)
    dx = np.empty_like(x3)
    for i in range(n):
        if across_spatial:
            norm = math.sqrt((x3[i] ** 2).sum() + eps)
            a = (x3[i] * g3[i]).sum()
            dx[i] = (g3[i] - x3[i] * a / norm / norm) / norm
        else:
            norm = np.sqrt(eps + (x3[i] ** 2).sum(0))[None, :]
            a = (x3[i] * g3[i]).sum(0)[None, :]
            dx[i] = (g3[i] - x3[i] * a / norm ** 2) / norm
        dx[i] *= scale if channel_shared else np.asarray(scale)[:, None]
    return dx.reshape(x.shape)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_forward_and_caffe_backward(across, shared):
    x = randn((2, 3, 4, 5))
    layer = make_layer(f"type: 'Normalize' norm_param {{ across_spatial: {str(across).lower()} "
                       f"channel_shared: {str(shared).lower()} eps: 0.01 }}", [x.shape])
    scale = np.float32(2.5) if shared else np.array([20.0, 0.5, 3.0], np.float32)
    assert layer.param_shapes() == [() if shared else (3,)]
    (top,) = run_layer(layer, [x], [scale])
    np.testing.assert_allclose(top, normalize_ref(x, scale, across, shared, 0.01), rtol=1e-5, atol=1e-6)
    g = randn(x.shape, 1)
    dx, dscale = jax.grad(lambda b, s: jnp.sum(run_layer(layer, [b], [s])[0] * g), argnums=(0, 1))(x, scale)
    np.testing.assert_allclose(dx, normalize_backward_ref(x, g, scale, across, shared, 0.01), rtol=1e-4, atol=1e-5)
    per = normalize_ref(x, 1.0, across, True, 0.01) * g
    np.testing.assert_allclose(dscale, per.sum() if shared else per.sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("across", [True, False])
def test_normalize_gradient_check(across):
    # SSD's backward is the exact derivative when the scale is shared (or uniform).
    x = randn((2, 3, 2, 3), 2)
    layer = make_layer(f"type: 'Normalize' norm_param {{ across_spatial: {str(across).lower()} }}", [x.shape])
    check_layer_grads(layer, [x], [np.float32(1.7)])


def test_normalize_default_scale_is_one_and_2d_bottom():
    layer = make_layer("type: 'Normalize' norm_param { channel_shared: false }", [(3, 4)])
    assert layer.param_fillers()[0].value == 1.0
    x = randn((3, 4))
    (top,) = run_layer(layer, [x], [np.ones(4, np.float32)])
    np.testing.assert_allclose(top, x / np.sqrt((x ** 2).sum(1, keepdims=True) + 1e-10), rtol=1e-5)


# ------------------------------------------------------------ Permute

def test_permute_orders_and_gradient():
    x = randn((2, 3, 4, 5))
    layer = make_layer("type: 'Permute' permute_param { order: 0 order: 2 order: 3 order: 1 }", [x.shape])
    assert layer.top_shapes() == [(2, 4, 5, 3)]
    np.testing.assert_array_equal(run_layer(layer, [x])[0], x.transpose(0, 2, 3, 1))
    partial = make_layer("type: 'Permute' permute_param { order: 2 }", [x.shape])
    np.testing.assert_array_equal(run_layer(partial, [x])[0], x.transpose(2, 0, 1, 3))
    check_layer_grads(layer, [x.astype(np.float64)])


@pytest.mark.parametrize("text, message", [
    ("order: 4", "order 4 is not an axis"),
    ("order: 1 order: 1", "twice"),
])
def test_permute_errors(text, message):
    with pytest.raises(NetspecError, match=message):
        make_layer(f"type: 'Permute' permute_param {{ {text} }}", [(1, 2, 3, 4)])


# ------------------------------------------------------------ PriorBox

def prior_box_ref(fh, fw, ih, iw, min_sizes, max_sizes, ars, flip, clip, variance, step=None, offset=0.5):
    """prior_box_layer.cpp, transcribed."""
    ratios = [1.0]
    for ar in ars:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if flip:
            ratios.append(1.0 / ar)
    sw, sh = (step, step) if step else (iw / fw, ih / fh)
    out = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = (w + offset) * sw, (h + offset) * sh
            for s, mn in enumerate(min_sizes):
                mn = int(mn)
                boxes = [(mn, mn)]
                if max_sizes:
                    side = math.sqrt(mn * int(max_sizes[s]))
                    boxes.append((side, side))
                boxes += [(mn * math.sqrt(r), mn / math.sqrt(r)) for r in ratios if abs(r - 1) >= 1e-6]
                for bw, bh in boxes:
                    out += [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
    out = np.array(out)
    if clip:
        out = np.clip(out, 0, 1)
    var = np.tile(variance, len(out) // len(variance))
    return np.stack([out, var])[None]


@pytest.mark.parametrize("text, kw", [
    ("min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 "
     "variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
     dict(min_sizes=[30], max_sizes=[60], ars=[2], flip=True, clip=False, variance=[.1, .1, .2, .2], step=8)),
    ("min_size: 60 min_size: 90 max_size: 111 max_size: 162 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 "
     "flip: true clip: true",
     dict(min_sizes=[60, 90], max_sizes=[111, 162], ars=[2, 3, 2], flip=True, clip=True, variance=[.1])),
    ("min_size: 20.7 aspect_ratio: 0.5 flip: false variance: 0.2",
     dict(min_sizes=[20.7], max_sizes=[], ars=[.5], flip=False, clip=False, variance=[.2])),
])
def test_prior_box_matches_ssd(text, kw):
    layer = make_layer(f"type: 'PriorBox' prior_box_param {{ {text} }}", [(1, 8, 3, 4), (1, 3, 24, 32)])
    (top,) = run_layer(layer, [np.zeros((1, 8, 3, 4), np.float32), np.zeros((1, 3, 24, 32), np.float32)])
    expected = prior_box_ref(3, 4, 24, 32, **kw)
    assert top.shape == expected.shape == (1, 2, 3 * 4 * layer.num_priors * 4)
    np.testing.assert_allclose(top, expected, rtol=1e-5, atol=1e-6)


def test_prior_box_img_size_without_image_bottom():
    layer = make_layer("type: 'PriorBox' prior_box_param { min_size: 10 img_size: 100 step: 25 }", [(1, 4, 4, 4)])
    expected = prior_box_ref(4, 4, 100, 100, [10], [], [], True, False, [.1], step=25)
    np.testing.assert_allclose(run_layer(layer, [np.zeros((1, 4, 4, 4), np.float32)])[0], expected, atol=1e-6)


@pytest.mark.parametrize("text, message", [
    ("max_size: 60", "needs min_size"),
    ("min_size: 30 aspect_ratio: 0", "aspect_ratio 0 produces no box"),
    ("min_size: 30 aspect_ratio: -2", "produces no box"),
    ("min_size: 30 max_size: 20", "must be greater than min_size"),
    ("min_size: 30 min_size: 40 max_size: 60", "one max_size per min_size"),
    ("min_size: 30 variance: 0.1 variance: 0.2", "variance takes 1 or 4"),
    ("min_size: 30 img_size: 10 img_h: 10 img_w: 10", "not both"),
])
def test_prior_box_errors(text, message):
    with pytest.raises(NetspecError, match=message) as info:
        make_layer(f"type: 'PriorBox' prior_box_param {{ {text} }}", [(1, 8, 3, 4), (1, 3, 24, 32)])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------ DetectionOutput

def iou_ref(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    size = lambda r: 0.0 if r[2] < r[0] or r[3] < r[1] else (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return iw * ih / (size(a) + size(b) - iw * ih)


def detection_output_ref(loc, conf, prior, num_classes, share, bg, code, vit, keep_top_k, thr, nms, eta, top_k):
    """detection_output_layer.cpp + bbox_util.cpp (DecodeBBox, ApplyNMSFast), transcribed in float64."""
    num, P = loc.shape[0], prior.shape[2] // 4
    L = 1 if share else num_classes
    loc = loc.reshape(num, P, L, 4).astype(np.float64)
    conf = conf.reshape(num, P, num_classes).astype(np.float64)
    pb, pv = prior[0, 0].reshape(P, 4).astype(np.float64), prior[0, 1].reshape(P, 4).astype(np.float64)
    rows = []
    for i in range(num):
        dec = np.empty((P, L, 4))
        for p in range(P):
            v = np.ones(4) if vit else pv[p]
            for c in range(L):
                b = loc[i, p, c]
                if code == 1:
                    dec[p, c] = pb[p] + v * b
                else:
                    pw, ph = pb[p, 2] - pb[p, 0], pb[p, 3] - pb[p, 1]
                    cx = v[0] * b[0] * pw + (pb[p, 0] + pb[p, 2]) / 2
                    cy = v[1] * b[1] * ph + (pb[p, 1] + pb[p, 3]) / 2
                    w, h = math.exp(v[2] * b[2]) * pw, math.exp(v[3] * b[3]) * ph
                    dec[p, c] = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        indices = {}
        for c in range(num_classes):
            if c == bg:
                continue
            boxes = dec[:, 0 if share else c]
            order = sorted([j for j in range(P) if conf[i, j, c] > thr], key=lambda j: -conf[i, j, c])
            if top_k > -1:
                order = order[:top_k]
            kept, t = [], nms
            for j in order:
                if all(iou_ref(boxes[j], boxes[k]) <= t for k in kept):
                    kept.append(j)
                    if eta < 1 and t > 0.5:
                        t *= eta
            indices[c] = kept
        if keep_top_k > -1 and sum(map(len, indices.values())) > keep_top_k:
            pairs = sorted([(conf[i, j, c], c, j) for c in indices for j in indices[c]], key=lambda t: -t[0])
            indices = {}
            for _, c, j in pairs[:keep_top_k]:
                indices.setdefault(c, []).append(j)
        for c in sorted(indices):
            for j in indices[c]:
                rows.append([i, c, conf[i, j, c], *dec[j, 0 if share else c]])
    if not rows:
        rows = [[i, -1, -1, -1, -1, -1, -1] for i in range(num)]
    return np.array(rows)


def _priors(P, seed):
    rs = np.random.RandomState(seed)
    xy = rs.uniform(0, 0.7, (P, 2))
    wh = rs.uniform(0.1, 0.3, (P, 2))
    boxes = np.concatenate([xy, xy + wh], 1).reshape(-1)
    var = np.tile([0.1, 0.1, 0.2, 0.2], P)
    return np.stack([boxes, var])[None].astype(np.float32)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("params, share, code, vit", [
    ("keep_top_k: 5 confidence_threshold: 0.2 nms_param { nms_threshold: 0.3 top_k: 8 }", True, 2, False),
    ("keep_top_k: -1 nms_param { nms_threshold: 0.45 eta: 0.9 }", True, 1, False),
    ("keep_top_k: 3 background_label_id: -1 nms_param { nms_threshold: 0.5 }", False, 2, True),
])
def test_detection_output_matches_ssd(params, share, code, vit):
    N, P, C = 2, 12, 4
    L = 1 if share else C
    loc = randn((N, P * L * 4), 3) * 0.5
    conf = _softmax(randn((N, P, C), 4) * 2).reshape(N, P * C).astype(np.float32)
    prior = _priors(P, 5)
    code_name = {1: "CORNER", 2: "CENTER_SIZE"}[code]
    text = (f"type: 'DetectionOutput' detection_output_param {{ num_classes: {C} "
            f"share_location: {str(share).lower()} code_type: {code_name} "
            f"variance_encoded_in_target: {str(vit).lower()} {params} }}")
    layer = make_layer(text, [loc.shape, conf.shape, prior.shape])
    (top,) = run_layer(layer, [loc, conf, prior])
    p = layer.lp.detection_output_param
    expected = detection_output_ref(
        loc, conf, prior, C, share, p.background_label_id, code, vit, p.keep_top_k,
        p.confidence_threshold if p.HasField("confidence_threshold") else -np.inf,
        p.nms_param.nms_threshold, p.nms_param.eta, p.nms_param.top_k if p.nms_param.HasField("top_k") else -1)
    assert top.shape == (1, 1, layer.rows, 7)
    got = detections(top)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(top)[0, 0, len(got):] == -1)


def test_detection_output_nothing_detected_writes_one_row_per_image():
    N, P, C = 2, 3, 3
    layer = make_layer(f"type: 'DetectionOutput' detection_output_param {{ num_classes: {C} keep_top_k: 4 "
                       "confidence_threshold: 0.99 }", [(N, P * 4), (N, P * C), (1, 2, P * 4)])
    conf = np.full((N, P * C), 1.0 / C, np.float32)
    (top,) = run_layer(layer, [np.zeros((N, P * 4), np.float32), conf, _priors(P, 0)])
    np.testing.assert_array_equal(detections(top), [[0] + [-1] * 6, [1] + [-1] * 6])
    assert top.shape == (1, 1, 8, 7)


@pytest.mark.parametrize("shapes, message", [
    ([(1, 40), (1, 30), (1, 2, 48)], "12 priors need 48 location predictions per image, bottom 0"),
    ([(1, 48), (1, 30), (1, 2, 48)], "need 36 confidences"),
    ([(1, 48), (1, 36), (1, 3, 48)], "PriorBox's"),
])
def test_detection_output_shape_errors(shapes, message):
    with pytest.raises(NetspecError, match=message) as info:
        make_layer("type: 'DetectionOutput' detection_output_param { num_classes: 3 }", shapes)
    assert "\n" not in str(info.value)


def test_detection_output_needs_num_classes():
    with pytest.raises(NetspecError, match="needs num_classes"):
        make_layer("type: 'DetectionOutput' detection_output_param { }", [(1, 48), (1, 36), (1, 2, 48)])


# ------------------------------------------------------------ an SSD head through netspec.Net

SSD_HEAD = """
name: "tiny_ssd"
input: "data"
input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv1_norm" type: "Normalize" bottom: "conv1" top: "conv1_norm"
  norm_param { across_spatial: false scale_filler { type: "constant" value: 20 } channel_shared: false } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "conv1_norm_mbox_loc" type: "Convolution" bottom: "conv1_norm" top: "conv1_norm_mbox_loc"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conv1_norm_mbox_loc_perm" type: "Permute" bottom: "conv1_norm_mbox_loc"
  top: "conv1_norm_mbox_loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv1_norm_mbox_loc_flat" type: "Flatten" bottom: "conv1_norm_mbox_loc_perm"
  top: "conv1_norm_mbox_loc_flat" flatten_param { axis: 1 } }
layer { name: "conv1_norm_mbox_conf" type: "Convolution" bottom: "conv1_norm" top: "conv1_norm_mbox_conf"
  convolution_param { num_output: 9 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conv1_norm_mbox_conf_perm" type: "Permute" bottom: "conv1_norm_mbox_conf"
  top: "conv1_norm_mbox_conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv1_norm_mbox_conf_flat" type: "Flatten" bottom: "conv1_norm_mbox_conf_perm"
  top: "conv1_norm_mbox_conf_flat" flatten_param { axis: 1 } }
layer { name: "conv1_norm_mbox_priorbox" type: "PriorBox" bottom: "conv1_norm" bottom: "data"
  top: "conv1_norm_mbox_priorbox"
  prior_box_param { min_size: 6 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 2 offset: 0.5 } }
layer { name: "conv2_mbox_loc" type: "Convolution" bottom: "conv2" top: "conv2_mbox_loc"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conv2_mbox_loc_perm" type: "Permute" bottom: "conv2_mbox_loc" top: "conv2_mbox_loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv2_mbox_loc_flat" type: "Flatten" bottom: "conv2_mbox_loc_perm" top: "conv2_mbox_loc_flat"
  flatten_param { axis: 1 } }
layer { name: "conv2_mbox_conf" type: "Convolution" bottom: "conv2" top: "conv2_mbox_conf"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conv2_mbox_conf_perm" type: "Permute" bottom: "conv2_mbox_conf" top: "conv2_mbox_conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conv2_mbox_conf_flat" type: "Flatten" bottom: "conv2_mbox_conf_perm" top: "conv2_mbox_conf_flat"
  flatten_param { axis: 1 } }
layer { name: "conv2_mbox_priorbox" type: "PriorBox" bottom: "conv2" bottom: "data" top: "conv2_mbox_priorbox"
  prior_box_param { min_size: 12 max_size: 24 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 4 offset: 0.5 } }
layer { name: "mbox_loc" type: "Concat" bottom: "conv1_norm_mbox_loc_flat" bottom: "conv2_mbox_loc_flat"
  top: "mbox_loc" concat_param { axis: 1 } }
layer { name: "mbox_conf" type: "Concat" bottom: "conv1_norm_mbox_conf_flat" bottom: "conv2_mbox_conf_flat"
  top: "mbox_conf" concat_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "Concat" bottom: "conv1_norm_mbox_priorbox" bottom: "conv2_mbox_priorbox"
  top: "mbox_priorbox" concat_param { axis: 2 } }
layer { name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax"
  softmax_param { axis: 2 } }
layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten"
  flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten"
  bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 3 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 20
    confidence_threshold: 0.01 } }
"""


def test_ssd_head_through_net(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(SSD_HEAD)
    net = netspec.Net(str(path), netspec.TEST)
    data = randn((1, 3, 32, 32), 7)
    out = net.forward(data=data)
    top = np.asarray(out["detection_out"])
    assert top.shape == (1, 1, 20, 7)
    # Priors: 16x16 cells x 3 boxes, then 8x8 cells x 4 boxes.
    P = 16 * 16 * 3 + 8 * 8 * 4
    assert net.blobs["mbox_priorbox"].data.shape == (1, 2, P * 4)
    loc = net.blobs["mbox_loc"].data
    conf = net.blobs["mbox_conf_flatten"].data
    prior = net.blobs["mbox_priorbox"].data
    expected = detection_output_ref(loc, conf, prior, 3, True, 0, 2, False, 20, 0.01, 0.45, 1.0, 400)
    np.testing.assert_allclose(detections(top), expected, rtol=1e-4, atol=1e-5)
    # Normalize's scale blob is (C,) filled with 20, and the whole net saves and reloads.
    np.testing.assert_array_equal(net.params["conv1_norm"][0].data, np.full(8, 20, np.float32))
    net.save(str(tmp_path / "ssd.caffemodel"))
    again = netspec.Net(str(path), str(tmp_path / "ssd.caffemodel"), netspec.TEST)
    np.testing.assert_allclose(np.asarray(again.forward(data=data)["detection_out"]), top, rtol=1e-5, atol=1e-6)

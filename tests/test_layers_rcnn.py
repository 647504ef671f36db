"""ROIPooling, SmoothL1Loss and PSROIPooling against NumPy transcriptions of the forks' loops.

References follow rbgirshick/caffe-fast-rcnn (branch faster-rcnn) roi_pooling_layer.cu and
smooth_L1_loss_layer.cu, and daijifeng001/caffe-rfcn psroi_pooling_layer.cu: forward and
backward kernels as plain loops, with the kernels' float32 arithmetic (NumPy float32
scalars).  ROIPooling's backward is compared with the transcribed kernel (MAX has no
derivative at ties); SmoothL1Loss also gets a finite-difference check.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec as caffe
from netspec.errors import NetspecError
from netspec.prototxt import parse_net
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def c_round(v):
    """C's roundf on a float32 value (halves away from zero), computed in double."""
    v = float(v)
    return math.copysign(math.floor(abs(v) + 0.5), v)


def top_and_grads(layer, bottoms, top_diff):
    """The layer's top and d(sum(top_diff * top))/d(bottoms), float32, jitted."""
    def objective(*b):
        top = run_layer(layer, list(b))[0]
        return jnp.sum(jnp.where(jnp.isnan(top), 0, top) * top_diff), top
    (_, top), g = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(*bottoms)
    return np.asarray(top), [np.asarray(x) for x in g]


# -- ROIPooling ------------------------------------------------------------------------------

def roi_geometry(roi, scale):
    """ROIPoolForward's per-ROI integers and bin sizes (float32)."""
    sw, sh, ew, eh = (int(c_round(F32(roi[k]) * F32(scale))) for k in (1, 2, 3, 4))
    return sw, sh, ew, eh, max(ew - sw + 1, 1), max(eh - sh + 1, 1)


def ref_roi_forward(x, rois, ph_n, pw_n, scale):
    """ROIPoolForward, one thread per (n, c, ph, pw): top and argmax."""
    n_img, channels, height, width = x.shape
    rois = rois.reshape(-1, 5).astype(F32)
    top = np.zeros((len(rois), channels, ph_n, pw_n), F32)
    argmax = -np.ones(top.shape, np.int64)
    for n, roi in enumerate(rois):
        batch = int(roi[0])
        sw, sh, ew, eh, rw, rh = roi_geometry(roi, scale)
        bin_h, bin_w = F32(rh) / F32(ph_n), F32(rw) / F32(pw_n)
        for c in range(channels):
            for ph in range(ph_n):
                for pw in range(pw_n):
                    hstart = int(np.floor(F32(ph) * bin_h))
                    wstart = int(np.floor(F32(pw) * bin_w))
                    hend = int(np.ceil(F32(ph + 1) * bin_h))
                    wend = int(np.ceil(F32(pw + 1) * bin_w))
                    hstart = min(max(hstart + sh, 0), height)
                    hend = min(max(hend + sh, 0), height)
                    wstart = min(max(wstart + sw, 0), width)
                    wend = min(max(wend + sw, 0), width)
                    empty = hend <= hstart or wend <= wstart
                    maxval, maxidx = (0.0 if empty else -FLT_MAX), -1
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if x[batch, c, h, w] > maxval:
                                maxval, maxidx = x[batch, c, h, w], h * width + w
                    top[n, c, ph, pw], argmax[n, c, ph, pw] = maxval, maxidx
    return top, argmax


def ref_roi_backward(x_shape, rois, argmax, top_diff, ph_n, pw_n, scale):
    """ROIPoolBackward, one thread per bottom cell (n, c, h, w)."""
    n_img, channels, height, width = x_shape
    rois = rois.reshape(-1, 5).astype(F32)
    diff = np.zeros(x_shape, np.float64)
    for n in range(n_img):
        for roi_n, roi in enumerate(rois):
            if int(roi[0]) != n:
                continue
            sw, sh, ew, eh, rw, rh = roi_geometry(roi, scale)
            bin_h, bin_w = F32(rh) / F32(ph_n), F32(rw) / F32(pw_n)
            for c in range(channels):
                for h in range(height):
                    for w in range(width):
                        if not (sw <= w <= ew and sh <= h <= eh):
                            continue
                        phs = min(max(int(np.floor(F32(h - sh) / bin_h)), 0), ph_n)
                        phe = min(max(int(np.ceil(F32(h - sh + 1) / bin_h)), 0), ph_n)
                        pws = min(max(int(np.floor(F32(w - sw) / bin_w)), 0), pw_n)
                        pwe = min(max(int(np.ceil(F32(w - sw + 1) / bin_w)), 0), pw_n)
                        for ph in range(phs, phe):
                            for pw in range(pws, pwe):
                                if argmax[roi_n, c, ph, pw] == h * width + w:
                                    diff[n, c, h, w] += top_diff[roi_n, c, ph, pw]
    return diff


def roi_layer(ph, pw, scale, num_rois, x_shape, rois_shape=None):
    text = (f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} '
            f'spatial_scale: {scale} }}')
    return make_layer(text, [x_shape, rois_shape or (num_rois, 5)])


# Boxes exercising: ordinary, rounding halves (x * scale = k + 0.5, both signs), partly and
# wholly outside the map, malformed (x2 < x1: forced to 1 cell), one-cell, bigger than the map.
ROIS = np.array([
    [0, 0, 0, 15, 15],
    [1, 3, 5, 14, 9],
    [0, 5, 10, 6, 22],         # 5 * 0.5 = 2.5 -> 3 ; 6 * 0.5 = 3 ; 22 * .5 = 11
    [1, -5, -3, 4, 6],         # -2.5 -> -3
    [0, 12, 14, 2, 3],         # malformed: end < start
    [1, 7, 7, 7, 7],
    [0, -40, -30, 60, 70],
    [1, 30, 30, 50, 50],       # outside the map: every bin empty
    [0, 1, 3, 16, 9],
], np.float32)


@pytest.mark.parametrize("ph,pw,scale", [(3, 3, 0.5), (2, 4, 1.0), (4, 3, 0.25)])
@pytest.mark.parametrize("ties", [False, True])
def test_roi_pooling_forward_and_backward(ph, pw, scale, ties):
    r = np.random.RandomState(ph * 10 + pw + ties)
    x_shape = (2, 3, 9, 11)
    x = (r.randint(0, 3, x_shape) if ties else r.randn(*x_shape)).astype(F32)
    if ties:
        x[0, 0] = -1.0                               # every cell of a bin equal
    rois = ROIS.copy()
    layer = roi_layer(ph, pw, scale, len(rois), x_shape)
    top_diff = r.randn(len(rois), 3, ph, pw).astype(F32)
    top, (gx, grois) = top_and_grads(layer, [x, rois], top_diff)
    want, argmax = ref_roi_forward(x, rois, ph, pw, scale)
    assert top.shape == (len(rois), 3, ph, pw)
    np.testing.assert_array_equal(top, want)
    np.testing.assert_allclose(gx, ref_roi_backward(x_shape, rois, argmax, top_diff, ph, pw, scale),
                               rtol=1e-5, atol=1e-5)
    assert not grois.any()


def test_roi_pooling_extremes_and_caffe_shaped_rois():
    """A bin of -inf keeps -FLT_MAX (nothing beats it, argmax -1, no gradient); rois as
    Caffe's (R, 5, 1, 1) blob; a batch index outside the batch pools to NaN."""
    x = np.random.RandomState(3).randn(1, 2, 6, 6).astype(F32)
    x[0, 1, :3, :3] = -np.inf
    rois = np.array([[0, 0, 0, 2, 2], [0, 0, 0, 5, 5], [1, 0, 0, 5, 5], [-1, 0, 0, 5, 5]], F32)
    layer = roi_layer(1, 1, 1.0, 4, x.shape, (4, 5, 1, 1))
    top, (gx, _) = top_and_grads(layer, [x, rois.reshape(4, 5, 1, 1)], np.ones((4, 2, 1, 1), F32))
    assert top[0, 1, 0, 0] == -FLT_MAX
    assert top[0, 0, 0, 0] == x[0, 0, :3, :3].max() and top[1, 1, 0, 0] == x[0, 1].max()
    assert np.isnan(top[2:]).all()
    want = ref_roi_backward(x.shape, rois[:2], ref_roi_forward(x, rois[:2], 1, 1, 1.0)[1],
                            np.ones((2, 2, 1, 1)), 1, 1, 1.0)
    np.testing.assert_allclose(gx, want)


def test_roi_pooling_float32_bin_past_the_roi():
    """57 rows in 7 bins: 7 * float32(57 / 7) > 57, so the last bin reaches row 57, one past
    the ROI's rows 0..56.  The forward pools it; the backward kernel's in-ROI test drops it."""
    x = np.zeros((1, 1, 60, 2), F32)
    x[0, 0, 57, 0] = 5.0
    x[0, 0, 50, 1] = 3.0
    rois = np.array([[0, 0, 0, 1, 56]], F32)
    layer = roi_layer(7, 2, 1.0, 1, x.shape)
    top, (gx, _) = top_and_grads(layer, [x, rois], np.ones((1, 1, 7, 2), F32))
    want, argmax = ref_roi_forward(x, rois, 7, 2, 1.0)
    np.testing.assert_array_equal(top, want)
    assert top[0, 0, 6, 0] == 5.0 and argmax[0, 0, 6, 0] == 57 * 2
    want_diff = ref_roi_backward(x.shape, rois, argmax, np.ones((1, 1, 7, 2)), 7, 2, 1.0)
    assert want_diff[0, 0, 57, 0] == 0 and want_diff[0, 0, 50, 1] == 1
    np.testing.assert_allclose(gx, want_diff)


def test_roi_pooling_errors():
    with pytest.raises(NetspecError,
                       match=r'under_test.*ROIPooling.*rois bottom must have shape \(R, 5\).*\(4, 4\)'):
        roi_layer(2, 2, 1.0, 4, (1, 3, 8, 8), (4, 4))
    with pytest.raises(NetspecError, match="rois bottom"):
        roi_layer(2, 2, 1.0, 4, (1, 3, 8, 8), (4, 5, 2))
    with pytest.raises(NetspecError, match=r"roi_pooling_param.pooled_h must be > 0 \(got 0\)"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_w: 2 }', [(1, 3, 8, 8), (4, 5)])
    with pytest.raises(NetspecError, match="pooled_w must be > 0"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 0 }',
                   [(1, 3, 8, 8), (4, 5)])
    with pytest.raises(NetspecError, match="takes 2 bottoms"):
        make_layer('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 }', [(1, 3, 8, 8)])
    with pytest.raises(NetspecError) as info:
        roi_layer(2, 2, 1.0, 4, (1, 3, 8), (4, 5))
    assert "\n" not in str(info.value) and "4 axes" in str(info.value)


# -- SmoothL1Loss ----------------------------------------------------------------------------

def ref_smooth_l1(b0, b1, w_in, w_out, sigma, loss_weight):
    """Forward_gpu and Backward_gpu: loss, d/d b0, d/d b1 (top diff = loss_weight)."""
    sigma2 = float(F32(sigma) * F32(sigma))
    num = b0.shape[0]
    b0, b1 = b0.reshape(-1).astype(np.float64), b1.reshape(-1).astype(np.float64)
    w_in = np.ones_like(b0) if w_in is None else w_in.reshape(-1).astype(np.float64)
    w_out = np.ones_like(b0) if w_out is None else w_out.reshape(-1).astype(np.float64)
    loss, deriv = 0.0, np.zeros_like(b0)
    for i in range(b0.size):
        d = float(F32(w_in[i] * F32(b0[i] - b1[i])))
        if abs(d) < 1.0 / sigma2:
            loss += w_out[i] * 0.5 * d * d * sigma2
            deriv[i] = sigma2 * d
        else:
            loss += w_out[i] * (abs(d) - 0.5 / sigma2)
            deriv[i] = (0 < d) - (d < 0)
    grad0 = loss_weight / num * deriv * w_in * w_out
    return loss / num, grad0, -grad0


def smooth_l1_layer(shapes, sigma=None):
    param = "" if sigma is None else f"smooth_l1_loss_param {{ sigma: {sigma} }}"
    return make_layer(f'type: "SmoothL1Loss" {param}', shapes)


@pytest.mark.parametrize("shapes,sigma", [
    ([(4, 8), (4, 8)], None),
    ([(4, 8), (4, 8, 1, 1), (4, 8), (4, 8, 1, 1)], 1.0),
    ([(2, 6, 3, 4)] * 4, 3.0),                 # the RPN's sigma
    ([(3, 5, 2)] * 2, 0.5),
])
def test_smooth_l1_forward_and_backward(shapes, sigma):
    r = np.random.RandomState(len(shapes))
    bottoms = [r.randn(*s).astype(F32) * 1.5 for s in shapes]
    if len(shapes) == 4:
        bottoms[2] = (r.rand(*shapes[2]) < 0.6).astype(F32) * 2
        bottoms[3] = r.rand(*shapes[3]).astype(F32)
    layer = smooth_l1_layer(shapes, sigma)
    assert layer.is_loss and layer.top_shapes() == [()]
    w_in, w_out = (bottoms[2], bottoms[3]) if len(shapes) == 4 else (None, None)
    loss, g0, g1 = ref_smooth_l1(bottoms[0], bottoms[1], w_in, w_out, 1.0 if sigma is None else sigma, 1.7)
    got = jax.jit(lambda *b: run_layer(layer, list(b))[0])(*bottoms)
    np.testing.assert_allclose(float(got), loss, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda *b: 1.7 * run_layer(layer, list(b))[0],
                             argnums=tuple(range(len(bottoms)))))(*bottoms)
    np.testing.assert_allclose(np.asarray(grads[0]).reshape(-1), g0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grads[1]).reshape(-1), g1, rtol=1e-5, atol=1e-7)
    for g in grads[2:]:
        assert not np.asarray(g).any()            # the fork sends nothing to the weights


def test_smooth_l1_threshold_and_finite_differences():
    """|d| exactly at float(1/sigma^2): float(1/9) > 1/9, so the fork's double compare puts it
    on the linear branch; float(1/0.81) < 1/0.81 puts it on the quadratic one."""
    for sigma in (3.0, 0.9):
        t = F32(1.0 / float(F32(sigma) * F32(sigma)))
        b0 = np.array([[t, -t, 0.0, 5.0]], F32)
        b1 = np.zeros_like(b0)
        layer = smooth_l1_layer([(1, 4), (1, 4)], sigma)
        loss, g0, _ = ref_smooth_l1(b0, b1, None, None, sigma, 1.0)
        value, grad = jax.jit(jax.value_and_grad(lambda a: run_layer(layer, [a, b1])[0]))(b0)
        np.testing.assert_allclose(float(value), loss, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad)[0], g0, rtol=1e-6)
    r = np.random.RandomState(5)
    layer = smooth_l1_layer([(2, 3, 2, 2)] * 4, 2.0)
    bottoms = [r.randn(2, 3, 2, 2), r.randn(2, 3, 2, 2), r.rand(2, 3, 2, 2) + 0.5, r.rand(2, 3, 2, 2)]
    check_layer_grads(layer, bottoms, wrt_bottoms=[0, 1], eps=1e-6, rtol=1e-5, atol=1e-8)


def test_smooth_l1_errors():
    with pytest.raises(NetspecError, match="both inside and outside weights.*got 3 bottoms"):
        smooth_l1_layer([(4, 8)] * 3)
    with pytest.raises(NetspecError, match="same first dimension"):
        smooth_l1_layer([(4, 8), (2, 16)])
    with pytest.raises(NetspecError, match=r"targets shape \(4, 4, 2\) does not match"):
        smooth_l1_layer([(4, 8), (4, 4, 2)])
    with pytest.raises(NetspecError, match="outside weights shape"):
        smooth_l1_layer([(4, 8), (4, 8), (4, 8), (3, 8)])
    with pytest.raises(NetspecError, match="at most 4 axes"):
        smooth_l1_layer([(1, 2, 1, 1, 2), (1, 2, 1, 1, 2)])


# -- PSROIPooling ----------------------------------------------------------------------------

def psroi_bins(roi, scale, ph, pw, g, height, width):
    """PSROIPoolingForward's bin boundaries, float32 as the kernel computes them."""
    f = F32
    sw = f(c_round(roi[1])) * f(scale)
    sh = f(c_round(roi[2])) * f(scale)
    ew = f(c_round(roi[3]) + 1.0) * f(scale)
    eh = f(c_round(roi[4]) + 1.0) * f(scale)
    rw, rh = f(max(float(ew - sw), 0.1)), f(max(float(eh - sh), 0.1))
    bin_h, bin_w = rh / f(g), rw / f(g)
    hstart = min(max(int(np.floor(f(ph) * bin_h + sh)), 0), height)
    wstart = min(max(int(np.floor(f(pw) * bin_w + sw)), 0), width)
    hend = min(max(int(np.ceil(f(ph + 1) * bin_h + sh)), 0), height)
    wend = min(max(int(np.ceil(f(pw + 1) * bin_w + sw)), 0), width)
    return hstart, hend, wstart, wend


def ref_psroi(x, rois, scale, output_dim, g, top_diff=None):
    """PSROIPoolingForward and PSROIPoolingBackwardAtomic."""
    n_img, channels, height, width = x.shape
    rois = rois.reshape(-1, 5).astype(F32)
    top = np.zeros((len(rois), output_dim, g, g), np.float64)
    diff = np.zeros(x.shape, np.float64)
    for n, roi in enumerate(rois):
        batch = int(roi[0])
        for ctop in range(output_dim):
            for ph in range(g):
                for pw in range(g):
                    hs, he, ws, we = psroi_bins(roi, scale, ph, pw, g, height, width)
                    c = (ctop * g + ph) * g + pw
                    empty = he <= hs or we <= ws
                    area = (he - hs) * (we - ws)
                    total = sum(float(x[batch, c, h, w]) for h in range(hs, he) for w in range(ws, we))
                    top[n, ctop, ph, pw] = 0.0 if empty else total / area
                    if top_diff is not None and not empty:
                        diff[batch, c, hs:he, ws:we] += top_diff[n, ctop, ph, pw] / area
    return top, diff


def psroi_layer(scale, output_dim, g, x_shape, num_rois):
    text = (f'type: "PSROIPooling" psroi_pooling_param {{ spatial_scale: {scale} '
            f'output_dim: {output_dim} group_size: {g} }}')
    return make_layer(text, [x_shape, (num_rois, 5)])


@pytest.mark.parametrize("scale,output_dim,g", [(0.5, 2, 3), (1.0, 3, 2), (0.25, 1, 4)])
def test_psroi_pooling_forward_and_backward(scale, output_dim, g):
    r = np.random.RandomState(g)
    x_shape = (2, output_dim * g * g, 9, 11)
    x = r.randn(*x_shape).astype(F32)
    rois = ROIS.copy()
    rois[3, 1] = -4.5                          # round(-4.5) = -5, not -4
    rois[2, 3] = 6.5                           # round(6.5) = 7, not 6
    layer = psroi_layer(scale, output_dim, g, x_shape, len(rois))
    top_diff = r.randn(len(rois), output_dim, g, g).astype(F32)
    top, (gx, grois) = top_and_grads(layer, [x, rois], top_diff)
    want, want_diff = ref_psroi(x, rois, scale, output_dim, g, top_diff)
    assert top.shape == (len(rois), output_dim, g, g)
    np.testing.assert_allclose(top, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, want_diff, rtol=1e-5, atol=1e-6)
    assert not grois.any()


def test_psroi_pooling_bad_batch_index_and_errors():
    x = np.random.RandomState(0).randn(1, 4, 5, 5).astype(F32)
    layer = psroi_layer(1.0, 1, 2, x.shape, 2)
    rois = np.array([[0, 0, 0, 4, 4], [2, 0, 0, 4, 4]], F32)
    top = np.asarray(jax.jit(lambda *b: run_layer(layer, list(b))[0])(x, rois))
    np.testing.assert_allclose(top[0], ref_psroi(x, np.array([[0, 0, 0, 4, 4]], F32), 1.0, 1, 2)[0][0],
                               rtol=1e-5, atol=1e-6)
    assert np.isnan(top[1]).all()
    with pytest.raises(NetspecError, match=r"input channel number does not match.*12 channels.*= 8"):
        psroi_layer(1.0, 2, 2, (1, 12, 5, 5), 3)
    with pytest.raises(NetspecError, match="psroi_pooling_param.group_size is required"):
        make_layer('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 output_dim: 2 }',
                   [(1, 8, 5, 5), (3, 5)])
    with pytest.raises(NetspecError, match=r"output_dim must be > 0 \(got 0\)"):
        psroi_layer(1.0, 0, 2, (1, 8, 5, 5), 3)
    with pytest.raises(NetspecError, match=r"rois bottom must have shape \(R, 5\).*\(3, 6\)"):
        make_layer('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 output_dim: 2 '
                   'group_size: 2 }', [(1, 8, 5, 5), (3, 6)])


# -- nets in the forks' prototxt syntax ------------------------------------------------------

FASTER_RCNN_HEAD = """
name: "FasterRCNN-head"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }
layer { name: "rois" type: "Input" top: "rois" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "labels" type: "Input" top: "labels" input_param { shape { dim: 6 } } }
layer { name: "bbox_targets" type: "Input" top: "bbox_targets" input_param { shape { dim: 6 dim: 12 } } }
layer { name: "bbox_inside_weights" type: "Input" top: "bbox_inside_weights"
        input_param { shape { dim: 6 dim: 12 } } }
layer { name: "bbox_outside_weights" type: "Input" top: "bbox_outside_weights"
        input_param { shape { dim: 6 dim: 12 } } }
layer { name: "rpn_targets" type: "Input" top: "rpn_targets"
        input_param { shape { dim: 2 dim: 8 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "rpn_bbox_pred" type: "Convolution" bottom: "conv2" top: "rpn_bbox_pred"
  convolution_param { num_output: 8 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "rpn_loss_bbox" type: "SmoothL1Loss" bottom: "rpn_bbox_pred" bottom: "rpn_targets"
  top: "rpn_loss_bbox" loss_weight: 1 smooth_l1_loss_param { sigma: 3.0 } }
layer {
  name: "roi_pool5"
  type: "ROIPooling"
  bottom: "conv2"
  bottom: "rois"
  top: "pool5"
  roi_pooling_param {
    pooled_w: 3
    pooled_h: 3
    spatial_scale: 0.5 # 1/2
  }
}
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc6" top: "cls_score"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc6" top: "bbox_pred"
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels"
  propagate_down: 1 propagate_down: 0 top: "loss_cls" loss_weight: 1 }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_inside_weights" bottom: "bbox_outside_weights" top: "loss_bbox" loss_weight: 1 }
"""


def softmax_loss_ref(scores, labels):
    """SoftmaxWithLoss (VALID normalization, no ignore label): loss and d/d scores."""
    e = np.exp(scores - scores.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    idx = labels.astype(int)
    n = len(idx)
    loss = -np.log(p[np.arange(n), idx]).sum() / n
    grad = p.copy()
    grad[np.arange(n), idx] -= 1
    return loss, grad / n


def test_faster_rcnn_head_net_forward_backward():
    net = caffe.Net(parse_net(FASTER_RCNN_HEAD), caffe.TRAIN, seed=3)
    r = np.random.RandomState(7)
    rois = np.array([[0, 0, 0, 15, 15], [0, 2, 3, 9, 12], [1, 4, 4, 13, 8],
                     [1, 0, 6, 5, 15], [0, 11, 1, 14, 4], [1, 7, 7, 7, 7]], F32)
    inputs = dict(data=r.randn(2, 3, 16, 16).astype(F32), rois=rois,
                  labels=np.array([0, 1, 2, 1, 0, 2], F32),
                  bbox_targets=r.randn(6, 12).astype(F32),
                  bbox_inside_weights=(r.rand(6, 12) < 0.5).astype(F32),
                  bbox_outside_weights=np.full((6, 12), 0.5, F32),
                  rpn_targets=r.randn(2, 8, 8, 8).astype(F32))
    out = net.forward(**inputs)
    b = {k: v.data for k, v in net.blobs.items()}
    pool5, argmax = ref_roi_forward(b["conv2"], rois, 3, 3, 0.5)
    np.testing.assert_array_equal(b["pool5"], pool5)
    w6, b6 = (p.data for p in net.params["fc6"])
    fc6 = np.maximum(pool5.reshape(6, -1) @ w6.T + b6, 0)
    np.testing.assert_allclose(b["fc6"], fc6, rtol=1e-5, atol=1e-5)
    loss_cls, d_cls = softmax_loss_ref(b["cls_score"].astype(np.float64), inputs["labels"])
    loss_bbox, d_bbox, _ = ref_smooth_l1(b["bbox_pred"], inputs["bbox_targets"],
                                         inputs["bbox_inside_weights"],
                                         inputs["bbox_outside_weights"], 1.0, 1.0)
    loss_rpn, d_rpn, _ = ref_smooth_l1(b["rpn_bbox_pred"], inputs["rpn_targets"], None, None, 3.0, 1.0)
    np.testing.assert_allclose(out["loss_cls"], loss_cls, rtol=1e-5)
    np.testing.assert_allclose(out["loss_bbox"], loss_bbox, rtol=1e-5)
    np.testing.assert_allclose(out["rpn_loss_bbox"], loss_rpn, rtol=1e-5)

    net.backward()
    d = {k: v.diff for k, v in net.blobs.items()}
    np.testing.assert_allclose(d["cls_score"], d_cls, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d["bbox_pred"].reshape(-1), d_bbox, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d["rpn_bbox_pred"].reshape(-1), d_rpn, rtol=1e-4, atol=1e-6)
    # conv2 is relu2's in-place top: its diff is the ReLU's bottom diff, as in Caffe
    roi_part = ref_roi_backward(b["conv2"].shape, rois, argmax, d["pool5"], 3, 3, 0.5)
    w_rpn = net.params["rpn_bbox_pred"][0].data.reshape(8, 5)
    rpn_part = np.einsum("nohw,oc->nchw", d["rpn_bbox_pred"], w_rpn)
    np.testing.assert_allclose(d["conv2"], (b["conv2"] > 0) * (roi_part + rpn_part),
                               rtol=1e-4, atol=1e-5)
    assert np.abs(net.params["conv1"][0].diff).sum() > 0
    assert not d["rois"].any()


RFCN_HEAD = """
name: "RFCN-head"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
input: "rois"
input_shape { dim: 5 dim: 5 }
input: "labels"
input_shape { dim: 5 }
input: "bbox_targets"
input_shape { dim: 5 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "rfcn_cls" type: "Convolution" bottom: "conv1" top: "rfcn_cls"
  convolution_param { num_output: 27 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "rfcn_bbox" type: "Convolution" bottom: "conv1" top: "rfcn_bbox"
  convolution_param { num_output: 72 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer {
    bottom: "rfcn_cls"
    bottom: "rois"
    top: "psroipooled_cls_rois"
    name: "psroipooled_cls_rois"
    type: "PSROIPooling"
    psroi_pooling_param {
        spatial_scale: 1.0
        output_dim: 3
        group_size: 3
    }
}
layer {
    bottom: "psroipooled_cls_rois"
    top: "cls_score"
    name: "ave_cls_score_rois"
    type: "Pooling"
    pooling_param {
        pool: AVE
        kernel_size: 3
        stride: 3
    }
}
layer {
    bottom: "rfcn_bbox"
    bottom: "rois"
    top: "psroipooled_loc_rois"
    name: "psroipooled_loc_rois"
    type: "PSROIPooling"
    psroi_pooling_param {
        spatial_scale: 1.0
        output_dim: 8
        group_size: 3
    }
}
layer {
    bottom: "psroipooled_loc_rois"
    top: "bbox_pred"
    name: "ave_bbox_pred_rois"
    type: "Pooling"
    pooling_param {
        pool: AVE
        kernel_size: 3
        stride: 3
    }
}
layer {
    name: "loss"
    type: "SoftmaxWithLoss"
    bottom: "cls_score"
    bottom: "labels"
    top: "loss_cls"
    loss_weight: 1
    propagate_down: true
    propagate_down: false
}
layer {
    name: "loss_bbox"
    type: "SmoothL1Loss"
    bottom: "bbox_pred"
    bottom: "bbox_targets"
    top: "loss_bbox"
    loss_weight: 1
    propagate_down: true
    propagate_down: false
}
"""


def test_rfcn_head_net_forward_backward():
    net = caffe.Net(parse_net(RFCN_HEAD), caffe.TRAIN, seed=4)
    r = np.random.RandomState(8)
    rois = np.array([[0, 0, 0, 11, 11], [0, 1.4, 2.5, 8.5, 9], [0, 5, 0, 11, 4],
                     [0, 3, 3, 3.2, 4], [0, 9, 9, 20, 20]], F32)
    inputs = dict(data=r.randn(1, 3, 12, 12).astype(F32), rois=rois,
                  labels=np.array([0, 1, 2, 1, 0], F32), bbox_targets=r.randn(5, 8).astype(F32))
    out = net.forward(**inputs)
    b = {k: v.data for k, v in net.blobs.items()}
    cls_pooled = ref_psroi(b["rfcn_cls"], rois, 1.0, 3, 3)[0]
    loc_pooled = ref_psroi(b["rfcn_bbox"], rois, 1.0, 8, 3)[0]
    np.testing.assert_allclose(b["psroipooled_cls_rois"], cls_pooled, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["cls_score"].reshape(5, 3), cls_pooled.mean((2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b["bbox_pred"].reshape(5, 8), loc_pooled.mean((2, 3)), rtol=1e-5, atol=1e-6)
    loss_cls, d_cls = softmax_loss_ref(b["cls_score"].reshape(5, 3).astype(np.float64), inputs["labels"])
    loss_bbox, d_bbox, _ = ref_smooth_l1(b["bbox_pred"], inputs["bbox_targets"], None, None, 1.0, 1.0)
    np.testing.assert_allclose(out["loss_cls"], loss_cls, rtol=1e-5)
    np.testing.assert_allclose(out["loss_bbox"], loss_bbox, rtol=1e-5)

    net.backward()
    d = {k: v.diff for k, v in net.blobs.items()}
    np.testing.assert_allclose(d["cls_score"].reshape(5, 3), d_cls, rtol=1e-4, atol=1e-6)
    # AVE over the whole 3x3 map spreads each diff evenly; PSROIPooling spreads it over bins
    want = ref_psroi(b["rfcn_cls"], rois, 1.0, 3, 3, np.repeat(np.repeat(d["cls_score"], 3, 2), 3, 3) / 9)[1]
    np.testing.assert_allclose(d["rfcn_cls"], want, rtol=1e-4, atol=1e-6)
    want = ref_psroi(b["rfcn_bbox"], rois, 1.0, 8, 3,
                     np.broadcast_to(d_bbox.reshape(5, 8, 1, 1), (5, 8, 3, 3)) / 9)[1]
    np.testing.assert_allclose(d["rfcn_bbox"], want, rtol=1e-4, atol=1e-6)
    assert not d["rois"].any() and np.abs(net.params["conv1"][0].diff).sum() > 0


def test_net_reports_bad_rois_blob_in_one_line():
    text = FASTER_RCNN_HEAD.replace("shape { dim: 6 dim: 5 }", "shape { dim: 6 dim: 4 }")
    with pytest.raises(NetspecError) as info:
        caffe.Net(parse_net(text), caffe.TRAIN)
    message = str(info.value)
    assert "\n" not in message and "roi_pool5" in message and "(6, 4)" in message

"""Softmax, loss layers and Accuracy against NumPy transcriptions of Caffe's formulas.

Forward values are checked in float32 against naive loops; gradients are checked in
float64 against loops that follow Caffe's Backward_cpu (or finite differences where
Caffe's backward is the plain derivative).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netspec.errors import NetspecError
from netspec.proto import caffe_pb2
from tests.layer_harness import check_layer_grads, make_layer, run_layer

jax.config.update("jax_default_matmul_precision", "highest")

FLT_MIN = np.finfo(np.float32).tiny
RTOL = 1e-5
# finite-difference step and tolerances for the float64 gradient checks
FD = dict(eps=1e-5, rtol=1e-5, atol=1e-8)


def rs(seed):
    return np.random.RandomState(seed)


def forward(layer, bottoms):
    """The layer's tops for float32 (or given-dtype) bottoms, in one jitted call."""
    return jax.jit(lambda *b: run_layer(layer, list(b)))(*bottoms)


def grads(layer, bottoms, loss_weight=1.7):
    """d(loss_weight * top0)/d(every bottom) in float64, in one jitted call."""
    with jax.enable_x64(True):
        b64 = [np.asarray(b, np.float64) for b in bottoms]

        def loss(*b):
            return loss_weight * run_layer(layer, list(b))[0]
        g = jax.jit(jax.grad(loss, argnums=tuple(range(len(b64)))))(*b64)
        return [np.asarray(x) for x in g]


def positions(shape, axis):
    """(outer, classes, inner) view helpers for Caffe's i * dim + c * inner + j indexing."""
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    return outer, shape[axis], inner


def ref_softmax(x, axis):
    outer, c, inner = positions(x.shape, axis)
    v = x.astype(np.float64).reshape(outer, c, inner)
    out = np.zeros_like(v)
    for i in range(outer):
        for j in range(inner):
            col = v[i, :, j]
            e = np.exp(col - col.max())
            out[i, :, j] = e / e.sum()
    return out.reshape(x.shape)


def ref_normalizer(mode, outer, inner, valid):
    n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, float(n))


# -- Softmax -----------------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((2, 5, 3, 4), 1), ((2, 3, 5, 4), 2),
                                        ((3, 4, 5), -1), ((4, 7), 1), ((2, 3, 4, 5), 0)])
def test_softmax_forward(shape, axis):
    x = rs(0).randn(*shape).astype(np.float32) * 3
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [shape])
    got = np.asarray(forward(layer, [x])[0])
    np.testing.assert_allclose(got, ref_softmax(x, axis % len(shape)), rtol=RTOL, atol=1e-7)


def test_softmax_gradient():
    layer = make_layer('type: "Softmax" softmax_param { axis: 2 }', [(2, 3, 3, 2)])
    check_layer_grads(layer, [rs(1).randn(2, 3, 3, 2)], **FD)


def test_softmax_bad_axis():
    with pytest.raises(NetspecError, match="under_test.*axis 4"):
        make_layer('type: "Softmax" softmax_param { axis: 4 }', [(2, 3, 4, 5)])


# -- SoftmaxWithLoss ---------------------------------------------------------------

def ref_softmax_loss(x, labels, axis, ignore, mode):
    """Caffe's Forward_cpu and Backward_cpu (unit top diff)."""
    outer, c, inner = positions(x.shape, axis)
    p = ref_softmax(x, axis).reshape(outer, c, inner)
    lab = labels.reshape(outer, inner).astype(np.int64)
    loss, count = 0.0, 0
    grad = p.copy()
    for i in range(outer):
        for j in range(inner):
            k = int(lab[i, j])
            if ignore is not None and k == ignore:
                grad[i, :, j] = 0
                continue
            loss -= np.log(max(p[i, k, j], FLT_MIN))
            grad[i, k, j] -= 1
            count += 1
    norm = ref_normalizer(mode, outer, inner, count)
    return loss / norm, grad.reshape(x.shape) / norm, p.reshape(x.shape)


def loss_text(kind, axis=1, ignore=None, norm=None, normalize=None):
    loss_param = ""
    if ignore is not None:
        loss_param += f" ignore_label: {ignore}"
    if norm is not None:
        loss_param += f" normalization: {norm}"
    if normalize is not None:
        loss_param += f" normalize: {str(normalize).lower()}"
    return (f'type: "{kind}" softmax_param {{ axis: {axis} }} '
            f'loss_param {{ {loss_param} }}')


SOFTMAX_LOSS_CASES = [
    # scores shape, label shape, axis, ignore, normalization, legacy normalize, mode
    ((2, 5, 3, 4), (2, 1, 3, 4), 1, 3, None, None, "VALID"),
    ((2, 5, 3, 4), (2, 1, 3, 4), 1, 3, "FULL", None, "FULL"),
    ((2, 5, 3, 4), (2, 3, 4), 1, None, "BATCH_SIZE", None, "BATCH_SIZE"),
    ((2, 5, 3, 4), (2, 12), 1, 0, "NONE", None, "NONE"),
    ((2, 5, 3, 4), (2, 1, 3, 4), 1, 255, None, False, "BATCH_SIZE"),
    ((2, 5, 3, 4), (2, 1, 3, 4), 1, 255, None, True, "VALID"),
    ((3, 2, 6, 4), (3, 2, 4), 2, 1, None, None, "VALID"),
    ((3, 4, 5), (3, 4), -1, None, "FULL", None, "FULL"),
    ((6, 7), (6,), 1, 2, None, None, "VALID"),
    ((6, 7), (6, 1, 1, 1), 1, None, None, None, "VALID"),
]


@pytest.mark.parametrize("shape,lshape,axis,ignore,norm,legacy,mode", SOFTMAX_LOSS_CASES)
def test_softmax_loss_forward_and_backward(shape, lshape, axis, ignore, norm, legacy, mode):
    r = rs(2)
    x = (r.randn(*shape) * 2).astype(np.float32)
    ax = axis % len(shape)
    labels = r.randint(0, shape[ax], size=lshape).astype(np.float32)
    layer = make_layer(loss_text("SoftmaxWithLoss", axis, ignore, norm, legacy),
                       [shape, lshape], num_tops=2)
    assert layer.is_loss and layer.top_shapes() == [(), shape]
    loss, prob = forward(layer, [x, labels])
    want_loss, want_grad, want_prob = ref_softmax_loss(x, labels, ax, ignore, mode)
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), want_loss, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(prob), want_prob, rtol=RTOL, atol=1e-7)
    g_scores, g_labels = grads(layer, [x, labels])
    np.testing.assert_allclose(g_scores, 1.7 * want_grad, rtol=1e-10, atol=1e-12)
    assert not np.any(g_labels)


def test_softmax_loss_matches_finite_differences():
    layer = make_layer(loss_text("SoftmaxWithLoss", ignore=1), [(2, 3, 2, 2), (2, 1, 2, 2)])
    labels = np.array([0, 1, 2, 2, 1, 0, 2, 0], np.float64).reshape(2, 1, 2, 2)
    check_layer_grads(layer, [rs(3).randn(2, 3, 2, 2), labels], wrt_bottoms=[0], **FD)


def test_softmax_loss_floor_keeps_caffe_gradient():
    # p of the label underflows to 0 in float32: the loss is -log(FLT_MIN) and the
    # gradient is still p - onehot (Caffe's backward ignores the floor).
    x = np.array([[0.0, -200.0], [1.0, 2.0]], np.float32)
    labels = np.array([1, 0], np.float32)
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { normalization: NONE }', [(2, 2), (2,)])
    p2 = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    want = -np.log(FLT_MIN) - np.log(p2[0])
    np.testing.assert_allclose(float(forward(layer, [x, labels])[0]), want, rtol=RTOL)
    g = np.asarray(jax.jit(jax.grad(lambda v: run_layer(layer, [v, labels])[0]))(x))
    np.testing.assert_allclose(g, [[1.0, -1.0], [p2[0] - 1, p2[1]]], rtol=1e-5, atol=1e-6)


def test_softmax_loss_prob_top_sends_no_gradient():
    shape = (2, 4, 3, 3)
    r = rs(4)
    x, labels = r.randn(*shape), r.randint(0, 4, (2, 1, 3, 3)).astype(float)
    layer = make_layer('type: "SoftmaxWithLoss"', [shape, labels.shape], num_tops=2)
    w = r.randn(*shape)
    with jax.enable_x64(True):
        def both(v):
            loss, prob = run_layer(layer, [v, labels])
            return loss + jnp.sum(w * prob)
        g = np.asarray(jax.jit(jax.grad(both))(x))
    np.testing.assert_allclose(g, grads(layer, [x, labels], loss_weight=1.0)[0], rtol=1e-12)


def test_softmax_loss_all_ignored_gives_zero():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 0 }', [(3, 4), (3,)])
    x = rs(5).randn(3, 4).astype(np.float32)
    assert float(forward(layer, [x, np.zeros(3, np.float32)])[0]) == 0.0


def test_softmax_loss_out_of_range_label_is_nan():
    layer = make_layer('type: "SoftmaxWithLoss"', [(3, 4), (3,)])
    x = rs(6).randn(3, 4).astype(np.float32)
    assert np.isnan(float(forward(layer, [x, np.array([0, 4, 1], np.float32)])[0]))


def test_softmax_loss_bad_label_count():
    with pytest.raises(NetspecError, match='"under_test".*label shape'):
        make_layer('type: "SoftmaxWithLoss"', [(2, 5, 3, 4), (2, 1, 3, 3)])


# -- SigmoidCrossEntropyLoss -------------------------------------------------------

def ref_sigmoid_xent(x, t, ignore, mode):
    xf, tf = x.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    loss, count = 0.0, 0
    grad = np.zeros_like(xf)
    for i in range(xf.size):
        if ignore is not None and int(tf[i]) == ignore:
            continue
        v = xf[i]
        loss -= v * (tf[i] - (v >= 0)) - np.log(1 + np.exp(v - 2 * v * (v >= 0)))
        grad[i] = 1 / (1 + np.exp(-v)) - tf[i]
        count += 1
    norm = ref_normalizer(mode, x.shape[0], xf.size // x.shape[0], count)
    return loss / norm, grad.reshape(x.shape) / norm


@pytest.mark.parametrize("ignore,norm,legacy,mode", [
    (None, None, None, "BATCH_SIZE"), (-1, "VALID", None, "VALID"),
    (-1, "FULL", None, "FULL"), (None, None, True, "VALID"), (-1, "NONE", None, "NONE")])
def test_sigmoid_cross_entropy(ignore, norm, legacy, mode):
    r = rs(7)
    x = (r.randn(3, 2, 5) * 4).astype(np.float32)
    x[0, 0, 0] = 0.0
    t = r.rand(3, 10).astype(np.float32)
    t[r.rand(3, 10) < 0.3] = -1 if ignore is not None else 0.0
    layer = make_layer(loss_text("SigmoidCrossEntropyLoss", 1, ignore, norm, legacy),
                       [x.shape, t.shape])
    want, want_grad = ref_sigmoid_xent(x, t, ignore, mode)
    np.testing.assert_allclose(float(forward(layer, [x, t])[0]), want, rtol=RTOL)
    g_x, g_t = grads(layer, [x, t])
    np.testing.assert_allclose(g_x, 1.7 * want_grad, rtol=1e-9, atol=1e-12)
    assert not np.any(g_t)


def test_sigmoid_cross_entropy_finite_differences():
    layer = make_layer('type: "SigmoidCrossEntropyLoss"', [(2, 3), (2, 3)])
    check_layer_grads(layer, [rs(8).randn(2, 3) * 2, rs(9).rand(2, 3)], wrt_bottoms=[0], **FD)


# -- EuclideanLoss ----------------------------------------------------------------

def test_euclidean_loss():
    r = rs(10)
    a, b = r.randn(3, 2, 2, 1).astype(np.float32), r.randn(3, 4).astype(np.float32)
    layer = make_layer('type: "EuclideanLoss"', [a.shape, b.shape])
    d = a.reshape(3, 4).astype(np.float64) - b
    want = sum(d[i, j] ** 2 for i in range(3) for j in range(4)) / 3 / 2
    np.testing.assert_allclose(float(forward(layer, [a, b])[0]), want, rtol=RTOL)
    check_layer_grads(layer, [a, b], **FD)
    np.testing.assert_allclose(grads(layer, [a, b])[0], 1.7 * d.reshape(a.shape) / 3, rtol=1e-6)


def test_euclidean_loss_shape_mismatch():
    with pytest.raises(NetspecError, match=r"\(3, 4\).*\(3, 5\)"):
        make_layer('type: "EuclideanLoss"', [(3, 4), (3, 5)])


# -- HingeLoss ------------------------------------------------------------------------

def ref_hinge(x, labels, squared):
    """Caffe's Forward_cpu and Backward_cpu, step by step."""
    num = x.shape[0]
    dim = x.size // num
    diff = x.astype(np.float64).reshape(num, dim).copy()
    for i in range(num):
        diff[i, int(labels[i])] *= -1
    for i in range(num):
        for j in range(dim):
            diff[i, j] = max(0.0, 1 + diff[i, j])
    loss = (diff ** 2).sum() / num if squared else np.abs(diff).sum() / num
    grad = diff.copy()
    for i in range(num):
        grad[i, int(labels[i])] *= -1
    grad = 2 * grad / num if squared else np.sign(grad) / num
    return loss, grad.reshape(x.shape)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    r = rs(11)
    x = (r.randn(4, 5, 1, 1) * 1.5).astype(np.float32)
    labels = np.array([0, 3, 4, 2], np.float32)
    x[0, 1, 0, 0] = -1.0      # exactly on the hinge: Caffe's sign(0) gives 0
    x[1, 3, 0, 0] = 1.0       # the label's margin exactly 0
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}',
                       [x.shape, labels.shape])
    want, want_grad = ref_hinge(x, labels, norm == "L2")
    np.testing.assert_allclose(float(forward(layer, [x, labels])[0]), want, rtol=RTOL)
    np.testing.assert_allclose(grads(layer, [x, labels])[0], 1.7 * want_grad, rtol=1e-12, atol=1e-15)


# -- MultinomialLogisticLoss ---------------------------------------------------------

def test_multinomial_logistic_loss():
    r = rs(12)
    p = r.rand(5, 3, 2, 1).astype(np.float32)
    p[2, 1, 0, 0] = 0.0       # below the 1e-20 floor
    labels = np.array([0, 5, 2, 1, 4], np.float32).reshape(5, 1, 1, 1)
    lab = labels.ravel().astype(int)
    layer = make_layer('type: "MultinomialLogisticLoss"', [p.shape, labels.shape])
    flat = p.reshape(5, 6).astype(np.float64)
    want = -sum(np.log(max(flat[i, lab[i]], 1e-20)) for i in range(5)) / 5
    np.testing.assert_allclose(float(forward(layer, [p, labels])[0]), want, rtol=RTOL)
    want_grad = np.zeros_like(flat)
    for i in range(5):
        k = lab[i]
        want_grad[i, k] = -1.0 / 5 / max(flat[i, k], 1e-20)
    np.testing.assert_allclose(grads(layer, [p, labels])[0], 1.7 * want_grad.reshape(p.shape),
                               rtol=1e-12)


def test_multinomial_logistic_label_shape():
    with pytest.raises(NetspecError, match="one label per item"):
        make_layer('type: "MultinomialLogisticLoss"', [(5, 3), (5, 2)])


# -- InfogainLoss ------------------------------------------------------------------

def ref_infogain(x, labels, h, axis, ignore, mode):
    outer, c, inner = positions(x.shape, axis)
    p = ref_softmax(x, axis).reshape(outer, c, inner)
    lab = labels.reshape(outer, inner)
    loss, count = 0.0, 0
    grad = np.zeros_like(p)
    for i in range(outer):
        for j in range(inner):
            k = int(lab[i, j])
            if ignore is not None and k == ignore:
                continue
            for l in range(c):
                loss -= h[k, l] * np.log(max(p[i, l, j], 1e-20))
                grad[i, l, j] = p[i, l, j] * h[k].sum() - h[k, l]
            count += 1
    norm = ref_normalizer(mode, outer, inner, count)
    return loss / norm, grad.reshape(x.shape) / norm, p.reshape(x.shape)


def infogain_case(seed, shape=(2, 4, 3, 2), axis=1):
    r = rs(seed)
    x = (r.randn(*shape) * 2).astype(np.float32)
    ax = axis % len(shape)
    lshape = shape[:ax] + shape[ax + 1:]
    labels = r.randint(0, shape[ax], size=lshape).astype(np.float32)
    h = r.rand(shape[ax], shape[ax]).astype(np.float32)
    return x, labels, h


@pytest.mark.parametrize("axis,ignore,norm,mode", [(1, None, None, "VALID"), (1, 2, "FULL", "FULL"),
                                                   (2, 0, None, "VALID"), (-1, None, "BATCH_SIZE", "BATCH_SIZE")])
def test_infogain_loss_matrix_bottom(axis, ignore, norm, mode):
    x, labels, h = infogain_case(13, axis=axis)
    ign = f"ignore_label: {ignore}" if ignore is not None else ""
    nrm = f"normalization: {norm}" if norm else ""
    layer = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ axis: {axis} }} '
                       f'loss_param {{ {ign} {nrm} }}',
                       [x.shape, labels.shape, (1, 1) + h.shape], num_tops=2)
    bottoms = [x, labels, h.reshape(1, 1, *h.shape)]
    loss, prob = forward(layer, bottoms)
    want, want_grad, want_p = ref_infogain(x, labels, h.astype(np.float64), axis % 4, ignore, mode)
    np.testing.assert_allclose(float(loss), want, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(prob), want_p, rtol=RTOL, atol=1e-7)
    g_scores, _, g_matrix = grads(layer, bottoms)
    np.testing.assert_allclose(g_scores, 1.7 * want_grad, rtol=1e-9, atol=1e-12)
    assert not np.any(g_matrix)


def test_infogain_loss_source_file(tmp_path):
    x, labels, h = infogain_case(14, shape=(5, 3))
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1, 3, 3])
    blob.data.extend(h.ravel().tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(blob.SerializeToString())
    layer = make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}',
                       [x.shape, labels.shape])
    want, want_grad, _ = ref_infogain(x, labels, h.astype(np.float64), 1, None, "VALID")
    np.testing.assert_allclose(float(forward(layer, [x, labels])[0]), want, rtol=RTOL)
    np.testing.assert_allclose(grads(layer, [x, labels])[0], 1.7 * want_grad, rtol=1e-9, atol=1e-12)


def test_infogain_identity_equals_softmax_loss():
    x, labels, _ = infogain_case(15, shape=(3, 4, 2))
    eye = np.eye(4, dtype=np.float32).reshape(1, 1, 4, 4)
    info = make_layer('type: "InfogainLoss"', [x.shape, labels.shape, eye.shape])
    soft = make_layer('type: "SoftmaxWithLoss"', [x.shape, labels.shape])
    np.testing.assert_allclose(float(forward(info, [x, labels, eye])[0]),
                               float(forward(soft, [x, labels])[0]), rtol=RTOL)


def test_infogain_errors(tmp_path):
    with pytest.raises(NetspecError, match="third bottom or infogain_loss_param.source"):
        make_layer('type: "InfogainLoss"', [(5, 3), (5,)])
    with pytest.raises(NetspecError, match="cannot read"):
        make_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/none" }}',
                   [(5, 3), (5,)])
    with pytest.raises(NetspecError, match="normalize is deprecated"):
        make_layer('type: "InfogainLoss" loss_param { normalize: true }', [(5, 3), (5,), (3, 3)])
    with pytest.raises(NetspecError, match=r"3 x 3 values; got shape \(2, 2\)"):
        make_layer('type: "InfogainLoss"', [(5, 3), (5,), (2, 2)])


# -- ContrastiveLoss -----------------------------------------------------------------

def ref_contrastive(a, b, y, margin, legacy):
    """Caffe's Forward_cpu and Backward_cpu (unit top diff)."""
    num, c = a.shape[0], a[0].size
    a2, b2 = a.reshape(num, c).astype(np.float64), b.reshape(num, c).astype(np.float64)
    loss = 0.0
    grad_a = np.zeros_like(a2)
    for i in range(num):
        d = a2[i] - b2[i]
        dist_sq = float(d @ d)
        if int(y[i]):
            loss += dist_sq
            grad_a[i] = d / num
        elif legacy:
            loss += max(margin - dist_sq, 0.0)
            if margin - dist_sq > 0:
                grad_a[i] = -d / num
        else:
            dist = np.sqrt(dist_sq)
            loss += max(margin - dist, 0.0) ** 2
            if margin - dist > 0:
                grad_a[i] = -(margin - dist) / (dist + 1e-4) * d / num
    return loss / num / 2, grad_a.reshape(a.shape)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(legacy):
    r = rs(16)
    a = (r.randn(6, 3, 1, 1) * 0.6).astype(np.float32)
    b = (r.randn(6, 3, 1, 1) * 0.6).astype(np.float32)
    y = np.array([1, 0, 0, 1, 0, 0.7], np.float32).reshape(6, 1, 1, 1)   # 0.7 -> int 0
    margin = float(np.float32(1.8))   # Caffe's margin is a float field
    layer = make_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
                       f'legacy_version: {str(legacy).lower()} }}', [a.shape, b.shape, y.shape])
    want, want_grad = ref_contrastive(a, b, y.ravel(), margin, legacy)
    np.testing.assert_allclose(float(forward(layer, [a, b, y])[0]), want, rtol=RTOL)
    bottoms = [a, b, y]
    g_a, g_b, g_y = grads(layer, bottoms)
    np.testing.assert_allclose(g_a, 1.7 * want_grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_b, -1.7 * want_grad, rtol=1e-9, atol=1e-12)
    assert not np.any(g_y)


def test_contrastive_loss_shapes():
    with pytest.raises(NetspecError, match="N x C x 1 x 1"):
        make_layer('type: "ContrastiveLoss"', [(4, 3, 2, 1), (4, 3, 2, 1), (4, 1, 1, 1)])


# -- Accuracy ---------------------------------------------------------------------

def ref_accuracy(x, labels, axis, top_k, ignore):
    """Caffe's Forward_cpu: hit when fewer than top_k other classes score >= the label's."""
    outer, c, inner = positions(x.shape, axis)
    v = x.reshape(outer, c, inner)
    lab = labels.reshape(outer, inner)
    hits, count = 0, 0
    per_hits, per_nums = np.zeros(c), np.zeros(c)
    for i in range(outer):
        for j in range(inner):
            k = int(lab[i, j])
            if ignore is not None and k == ignore:
                continue
            per_nums[k] += 1
            better = -1
            for m in range(c):
                better += v[i, m, j] >= v[i, k, j]
            if better < top_k:
                hits += 1
                per_hits[k] += 1
            count += 1
    per_class = np.where(per_nums == 0, 0, per_hits / np.maximum(per_nums, 1))
    return (hits / count if count else 0.0), per_class


@pytest.mark.parametrize("shape,lshape,axis,top_k,ignore", [
    ((7, 5), (7,), 1, 1, None),
    ((7, 5), (7, 1, 1, 1), 1, 2, 3),
    ((2, 6, 3, 4), (2, 1, 3, 4), 1, 3, None),
    ((2, 6, 3, 4), (2, 12), 1, 1, 0),
    ((2, 3, 5, 4), (2, 3, 4), 2, 2, 1),
    ((3, 4, 6), (3, 4), -1, 4, None),
])
def test_accuracy(shape, lshape, axis, top_k, ignore):
    r = rs(17)
    # few distinct values so ties are common
    x = r.randint(0, 4, size=shape).astype(np.float32)
    ax = axis % len(shape)
    labels = r.randint(0, shape[ax], size=lshape).astype(np.float32)
    ign = f"ignore_label: {ignore}" if ignore is not None else ""
    layer = make_layer(f'type: "Accuracy" accuracy_param {{ axis: {axis} top_k: {top_k} {ign} }}',
                       [shape, lshape], num_tops=2)
    assert layer.top_shapes() == [(), (shape[ax],)]
    acc, per_class = forward(layer, [x, labels])
    want, want_per = ref_accuracy(x, labels, ax, top_k, ignore)
    assert acc.shape == ()
    np.testing.assert_allclose(float(acc), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(per_class), want_per, rtol=1e-6)
    g = jax.jit(jax.grad(lambda v: run_layer(layer, [v, labels])[0]))(x)
    assert not np.any(np.asarray(g))


def test_accuracy_ties_count_against_the_label():
    x = np.array([[1.0, 2.0, 2.0], [3.0, 3.0, 1.0], [0.0, 1.0, 2.0]], np.float32)
    labels = np.array([1, 0, 2], np.float32)
    top1 = make_layer('type: "Accuracy"', [x.shape, labels.shape])
    top2 = make_layer('type: "Accuracy" accuracy_param { top_k: 2 }', [x.shape, labels.shape])
    # rows 0 and 1: the label ties with another class -> miss at top-1, hit at top-2
    np.testing.assert_allclose(float(forward(top1, [x, labels])[0]), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(float(forward(top2, [x, labels])[0]), 1.0, rtol=1e-6)


def test_accuracy_all_ignored_is_zero():
    layer = make_layer('type: "Accuracy" accuracy_param { ignore_label: 2 }', [(3, 4), (3,)], num_tops=2)
    acc, per = forward(layer, [rs(18).randn(3, 4), np.full(3, 2.0)])
    assert float(acc) == 0.0 and not np.any(np.asarray(per))


def test_accuracy_errors():
    with pytest.raises(NetspecError, match="top_k 6 exceeds"):
        make_layer('type: "Accuracy" accuracy_param { top_k: 6 }', [(3, 5), (3,)])
    with pytest.raises(NetspecError, match="label count"):
        make_layer('type: "Accuracy"', [(2, 5, 3, 3), (2, 9, 2)])


# -- dtypes ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,shapes", [
    ('type: "Softmax"', [(2, 3, 2, 2)]),
    ('type: "SoftmaxWithLoss"', [(2, 3, 2, 2), (2, 1, 2, 2)]),
    ('type: "SigmoidCrossEntropyLoss"', [(2, 3), (2, 3)]),
    ('type: "EuclideanLoss"', [(2, 3), (2, 3)]),
    ('type: "HingeLoss"', [(2, 3), (2,)]),
    ('type: "MultinomialLogisticLoss"', [(2, 3), (2,)]),
    ('type: "InfogainLoss"', [(2, 3), (2,), (3, 3)]),
    ('type: "ContrastiveLoss"', [(2, 3), (2, 3), (2,)]),
    ('type: "Accuracy"', [(2, 3, 2, 2), (2, 1, 2, 2)]),
])
def test_tops_keep_the_input_dtype(text, shapes):
    layer = make_layer(text, shapes)
    bottoms = [np.ones(s, np.float32) for s in shapes]
    assert all(t.dtype == np.float32 for t in forward(layer, bottoms))
    with jax.enable_x64(True):
        tops = forward(layer, [b.astype(np.float64) for b in bottoms])
        assert all(t.dtype == np.float64 for t in tops)

"""Padded execution (``netspec.buckets``): a net run at a larger bucket shape, with the
true image size passed as runtime extents, computes what the exact-shape run computes.

Each comparison runs the same net, params and inputs twice: once built at the true
input shapes (the reference, Caffe's semantics), once built at the bucket shapes with
the inputs zero-padded at the bottom/right and ``extents`` given.  Every blob (cut to
its true shape), the loss, every param gradient and the updated layer state must agree
within 1e-5 of the reference's max |value| (plus 1e-6 for all-zero blobs).

The nets are small copies of the reference FCN nets (``models/voc-fcn32s``, ``16s``,
``8s``, ``voc-fcn-alexnet``: conv1 pad 100, ceil pooling, fc6 as a conv, Deconvolution
upsampling, the reference Crop offsets, Eltwise SUM fusion) and a layer mix, all with
gaussian weights and nonzero biases, so the cells outside the image hold garbage that
must not leak into the inside.  The pure-API comparison runs the FCN-32s, -16s and -8s
heads as one net on a shared trunk (one compile per size instead of three); the
shape tests and the ``Net`` tests use them as separate nets.
"""
import functools

import jax
import numpy as np
import pytest

import netspec
from netspec import compiler
from netspec.buckets import Bucketing, coarsest_stride, parse_policy, round_side
from netspec.errors import NetspecError
from netspec.graph import build_graph
from netspec.layers.base import TRAIN
from netspec.prototxt import parse_net

CLASSES = 3
IGNORE = 255
MULTIPLE_32 = ("multiple", 32)


# ---------------------------------------------------------------- prototxt builders

def layer(name, type_, bottoms, tops=None, body=""):
    lines = [f'layer {{ name: "{name}" type: "{type_}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in (tops if tops is not None else [name])]
    if body:
        lines.append(f"  {body}")
    return "\n".join(lines) + " }\n"


def inputs_layer(*shapes):
    """One Input layer; ``shapes``: (top, shape) pairs (the declared shapes; tests override them)."""
    tops = [t for t, _ in shapes]
    dims = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for _, s in shapes)
    return layer("input", "Input", [], tops, f"input_param {{ {dims} }}")


def conv(name, bottom, num_output, kernel, pad=0, stride=1, group=1, dilation=1, std=0.2):
    return layer(name, "Convolution", [bottom], body=(
        f"convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} "
        f"stride: {stride} group: {group} dilation: {dilation} "
        f'weight_filler {{ type: "gaussian" std: {std} }} '
        'bias_filler { type: "gaussian" std: 0.5 } }'))


def deconv(name, bottom, num_output, kernel, stride, group=1, std=0.2):
    """Upsampling as in the FCN nets (no bias), with gaussian weights."""
    return layer(name, "Deconvolution", [bottom], body=(
        f"convolution_param {{ num_output: {num_output} kernel_size: {kernel} stride: {stride} "
        f'group: {group} bias_term: false weight_filler {{ type: "gaussian" std: {std} }} }}'))


def relu(blob):
    return layer(f"relu_{blob}", "ReLU", [blob], [blob])


def dropout(blob):
    """Dropout that is inactive in every phase (padded Dropout masks differ by design)."""
    return layer(f"drop_{blob}", "Dropout", [blob], [blob], "dropout_param { dropout_ratio: 0 }")


def pool(name, bottom, kernel=2, stride=2, pad=0, method="MAX", tops=None, extra=""):
    return layer(name, "Pooling", [bottom], tops, (
        f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} {extra} }}"))


def lrn(name, bottom, size=5, alpha=0.5, beta=0.75, region="ACROSS_CHANNELS"):
    return layer(name, "LRN", [bottom], body=(
        f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} norm_region: {region} }}"))


def crop(name, bottom, reference, offset, axis=2):
    return layer(name, "Crop", [bottom, reference],
                 body=f"crop_param {{ axis: {axis} offset: {offset} }}")


def eltwise(name, bottoms, operation):
    return layer(name, "Eltwise", bottoms, body=f"eltwise_param {{ operation: {operation} }}")


def softmax_loss(name, score, label, loss_param, loss_weight=1, tops=None):
    """With a second top (the probabilities), that top gets loss_weight 0."""
    weights = f"loss_weight: {loss_weight}" + (" loss_weight: 0" if tops and len(tops) == 2 else "")
    return layer(name, "SoftmaxWithLoss", [score, label], tops, f"{weights} loss_param {{ {loss_param} }}")


# ---------------------------------------------------------------- the nets

FCN_INPUTS = inputs_layer(("data", (1, 3, 32, 32)), ("label", (1, 1, 32, 32)))


def vgg_trunk():
    """FCN-VGG16's trunk with one conv per stage: conv1_1 pad 100, five 2x2/2 ceil max
    poolings, fc6 as a 7x7 conv, fc7 1x1, score_fr."""
    text, bottom = "", "data"
    for stage in range(1, 6):
        name = f"conv{stage}_1"
        text += conv(name, bottom, 4, 3, pad=100 if stage == 1 else 1) + relu(name)
        text += pool(f"pool{stage}", name)
        bottom = f"pool{stage}"
    text += conv("fc6", "pool5", 8, 7) + relu("fc6") + dropout("fc6")
    text += conv("fc7", "fc6", 8, 1) + relu("fc7") + dropout("fc7")
    return text + conv("score_fr", "fc7", CLASSES, 1)


def upscore_and_loss(suffix, bottom, deconv_name, kernel, stride, offset):
    """Upsampling to the input size, the reference nets' final Crop, SoftmaxWithLoss."""
    score, loss = "score" + suffix, "loss" + suffix
    return (deconv(deconv_name, bottom, CLASSES, kernel, stride)
            + crop(score, deconv_name, "data", offset)
            + softmax_loss(loss, score, "label", f"ignore_label: {IGNORE} normalize: false"))


POOL4_FUSION = (deconv("upscore2", "score_fr", CLASSES, 4, 2)
                + conv("score_pool4", "pool4", CLASSES, 1)
                + crop("score_pool4c", "score_pool4", "upscore2", 5)
                + eltwise("fuse_pool4", ["upscore2", "score_pool4c"], "SUM"))

POOL3_FUSION = (deconv("upscore_pool4", "fuse_pool4", CLASSES, 4, 2)
                + conv("score_pool3", "pool3", CLASSES, 1)
                + crop("score_pool3c", "score_pool3", "upscore_pool4", 9)
                + eltwise("fuse_pool3", ["upscore_pool4", "score_pool3c"], "SUM"))


def fcn_vgg(suffix32=None, suffix16=None, suffix8=None):
    """The trunk and the FCN-32s, -16s and/or -8s heads (those given a loss/score suffix)."""
    text = FCN_INPUTS + vgg_trunk()
    if suffix32 is not None:
        text += upscore_and_loss(suffix32, "score_fr", "upscore", 64, 32, 19)
    if suffix16 is not None or suffix8 is not None:
        text += POOL4_FUSION
    if suffix16 is not None:
        text += upscore_and_loss(suffix16, "fuse_pool4", "upscore16", 32, 16, 27)
    if suffix8 is not None:
        text += POOL3_FUSION + upscore_and_loss(suffix8, "fuse_pool3", "upscore8", 16, 8, 31)
    return text


FCN32S, FCN16S, FCN8S = fcn_vgg(suffix32=""), fcn_vgg(suffix16=""), fcn_vgg(suffix8="")
# One net with all three heads on one trunk (each head exactly as in its own net): the
# padded comparison compiles it once per size instead of three nets once each.
FCN_32S_16S_8S = fcn_vgg("_32s", "_16s", "_8s")

FCN_ALEXNET = (
    FCN_INPUTS
    + conv("conv1", "data", 4, 11, pad=100, stride=4, std=0.05) + relu("conv1")
    + pool("pool1", "conv1", 3, 2) + lrn("norm1", "pool1")
    + conv("conv2", "norm1", 4, 5, pad=2, group=2) + relu("conv2")
    + pool("pool2", "conv2", 3, 2) + lrn("norm2", "pool2")
    + conv("conv3", "norm2", 6, 3, pad=1) + relu("conv3")
    + conv("conv4", "conv3", 6, 3, pad=1, group=2) + relu("conv4")
    + conv("conv5", "conv4", 4, 3, pad=1, group=2) + relu("conv5")
    + pool("pool5", "conv5", 3, 2)
    + conv("fc6", "pool5", 8, 6) + relu("fc6") + dropout("fc6")
    + conv("fc7", "fc6", 8, 1) + relu("fc7") + dropout("fc7")
    + conv("score_fr", "fc7", CLASSES, 1)
    + deconv("upscore", "score_fr", CLASSES, 63, 32)
    + crop("score", "upscore", "data", 18)
    + softmax_loss("loss", "score", "label", f"ignore_label: {IGNORE} normalize: true"))

NORMALIZATIONS = ("VALID", "FULL", "BATCH_SIZE", "NONE")


def mix_losses():
    """A 1x1 score conv and a SoftmaxWithLoss per normalization mode, with and without
    ignore_label (each loss its own conv, so each conv's gradient checks one loss)."""
    text = ""
    for i, mode in enumerate(NORMALIZATIONS):
        for ignore in (True, False):
            suffix = f"{mode.lower()}_{'ignore' if ignore else 'all'}"
            text += conv(f"score_{suffix}", "exp", CLASSES, 1, std=1.0)
            param = f"normalization: {mode}" + (f" ignore_label: {IGNORE}" if ignore else "")
            label = "label" if ignore else "label_dense"
            tops = [f"loss_{suffix}", f"prob_{suffix}"] if mode == "VALID" else None
            text += softmax_loss(f"loss_{suffix}", f"score_{suffix}", label, param,
                                 loss_weight=0.5 + i + 2 * ignore, tops=tops)
    return text


# Batch of 2, run in TRAIN: BatchNorm "bn_batch" uses batch statistics (over the true
# extent only) and updates its state; "bn_global" (use_global_stats) computes what
# BatchNorm computes in TEST, from the stored statistics.
MIX = (
    inputs_layer(("data", (2, 3, 16, 16)), ("label", (2, 1, 16, 16)), ("label_dense", (2, 1, 16, 16)))
    + conv("conv1", "data", 6, 3, pad=1) + relu("conv1")
    + layer("bn_batch", "BatchNorm", ["conv1"])
    + layer("scale_batch", "Scale", ["bn_batch"], body="scale_param { bias_term: true }")
    + conv("dilated", "conv1", 6, 3, pad=1, dilation=2)
    + layer("bn_global", "BatchNorm", ["dilated"], body="batch_norm_param { use_global_stats: true }")
    + layer("scale", "Scale", ["bn_global"], body=(
        'scale_param { bias_term: true filler { type: "gaussian" mean: 1 std: 0.3 } '
        'bias_filler { type: "gaussian" std: 0.5 } }'))
    + lrn("lrn", "scale", size=3, alpha=1.0, region="WITHIN_CHANNEL")
    + pool("ave", "lrn", 3, 2, pad=1, method="AVE")
    + pool("maxpool", "scale", 3, 2, pad=1, tops=["maxpool", "maxpool_mask"])
    + eltwise("max", ["ave", "maxpool"], "MAX")
    + eltwise("prod", ["ave", "maxpool"], "PROD")
    + layer("concat", "Concat", ["max", "prod"], body="concat_param { axis: 1 }")
    + pool("concat_pool", "concat", 2, 2, pad=1)     # drops its last window at odd sizes
    + deconv("up", "concat_pool", 6, 8, 4, group=2, std=0.3)
    + crop("up_crop", "up", "conv1", 1)
    # positive inside the image (data > 0 there), 0 outside: Log and a negative Power
    # would give -inf/inf there, and NaN gradients for "gain", without their fill values
    + conv("gain", "data", 3, 3, pad=1, std=0.1)
    + layer("positive", "Sigmoid", ["gain"])
    + eltwise("gated", ["data", "positive"], "PROD")
    + layer("log_gated", "Log", ["gated"])
    + layer("rsqrt_gated", "Power", ["gated"], body="power_param { power: -0.5 }")
    + eltwise("gated_sum", ["log_gated", "rsqrt_gated"], "SUM")
    + conv("gated_conv", "gated_sum", 6, 1)
    + eltwise("fused", ["scale_batch", "up_crop", "gated_conv"], "SUM") + dropout("fused")
    + layer("square", "Power", ["fused"], body="power_param { power: 2 scale: 0.5 shift: 1 }")
    + layer("log", "Log", ["square"], body="log_param { base: 2 shift: 1 }")
    + layer("root", "Power", ["log"], body="power_param { power: 0.5 shift: 0.25 }")
    + layer("exp", "Exp", ["root"], body="exp_param { scale: -1 }")
    + mix_losses()
    + layer("softmax", "Softmax", ["score_valid_ignore"], ["softmax"])
    + layer("accuracy", "Accuracy", ["score_valid_ignore", "label"], ["accuracy", "class_accuracy"],
            f"accuracy_param {{ ignore_label: {IGNORE} }}")
    + layer("accuracy_top2", "Accuracy", ["score_full_all", "label_dense"],
            body="accuracy_param { top_k: 2 }")
    + layer("sigmoid_full", "SigmoidCrossEntropyLoss", ["score_none_all", "softmax"],
            body="loss_weight: 0.7 loss_param { normalization: FULL }")
    + layer("sigmoid_valid", "SigmoidCrossEntropyLoss", ["score_full_ignore", "softmax"],
            body="loss_weight: 1.3 loss_param { normalization: VALID }")
    + layer("euclidean", "EuclideanLoss", ["score_batch_size_all", "score_none_ignore"],
            body="loss_weight: 0.1"))


class Case:
    """A net for the padded-vs-exact comparison and the sizes it runs at."""

    def __init__(self, name, text, phase, batch, sizes, count):
        self.name, self.text, self.phase, self.batch = name, text, phase, batch
        rs = np.random.RandomState(sum(map(ord, name)))
        self.sizes = [tuple(int(v) for v in rs.randint(sizes[0], sizes[1] + 1, 2)) for _ in range(count)]

    def __repr__(self):
        return self.name

    @functools.cached_property
    def net_param(self):
        return parse_net(self.text)

    @functools.cached_property
    def input_channels(self):
        declared = build_graph(self.net_param, self.phase)
        return {name: declared.blob_shapes[name][1] for name in declared.inputs}

    def input_shapes(self, h, w):
        return {name: (self.batch, channels, h, w) for name, channels in self.input_channels.items()}

    def graph(self, h, w):
        return _graph(self, h, w)

    @functools.cached_property
    def params_and_state(self):
        params, state = compiler.init_params(self.graph(16, 16), seed=1)
        rs = np.random.RandomState(2)
        for name, (mean_sum, var_sum, factor) in state.items():   # BatchNorm: stored statistics
            factor[...] = 2.0
            mean_sum[...] = rs.randn(*mean_sum.shape)
            var_sum[...] = rs.uniform(0.5, 3.0, var_sum.shape)
        return params, state

    def random_inputs(self, rs, h, w):
        values = {}
        for name, shape in self.input_shapes(h, w).items():
            if name == "data":     # positive, for the layer mix's Log and Power
                values[name] = rs.uniform(0.2, 2.0, shape).astype(np.float32)
            else:
                labels = rs.randint(0, CLASSES, shape).astype(np.float32)
                if name == "label":
                    labels[rs.rand(*shape) < 0.2] = IGNORE
                values[name] = labels
        return values


@functools.lru_cache(maxsize=None)
def _graph(case, h, w):
    return build_graph(case.net_param, case.phase, input_shapes=case.input_shapes(h, w))


CASES = [
    Case("fcn_32s_16s_8s", FCN_32S_16S_8S, TRAIN, 1, (1, 64), 20),
    Case("fcn_alexnet", FCN_ALEXNET, TRAIN, 1, (1, 64), 20),
    Case("layer_mix", MIX, TRAIN, 2, (5, 64), 20),
]


# ---------------------------------------------------------------- running the pure API

# Both runs of a comparison are compiled with XLA's older CPU code generator at LLVM
# optimization level 1 (the same settings for both): the property under test is
# netspec's (what the padded graph computes), not XLA's code generation, and it makes
# each of the ~75 compiles here about 2.5x faster.  The Net tests below run with
# netspec's own (default) compilation.
FAST_CPU_COMPILE = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}


def compile_for(fn, args):
    lowered = jax.jit(fn).lower(*args)
    if jax.default_backend() == "cpu":
        try:
            return lowered.compile(compiler_options=FAST_CPU_COMPILE)
        except Exception as e:      # an XLA without these options: its defaults
            if "compile option" not in str(e):
                raise
    return lowered.compile()


def loss_and_grads(graph):
    """``(params, state, inputs, extents) -> ((loss, (blobs, new_state)), param_grads)``."""
    def objective(params, state, inputs, extents):
        blobs, loss, new_state = compiler.forward(graph, params, state, inputs, extents=extents,
                                                  train=graph.phase == TRAIN)
        return loss, (blobs, new_state)
    return jax.value_and_grad(objective, has_aux=True)


_padded_executables = {}


def run_exact(case, inputs, h, w):
    graph = case.graph(h, w)
    params, state = case.params_and_state
    args = (params, state, inputs, None)
    return compile_for(loss_and_grads(graph), args)(*args)


def run_padded(case, inputs, h, w):
    """The padded run in the bucket of (h, w), each side rounded up to a multiple of 32;
    one executable per bucket."""
    bucket_h, bucket_w = round_side(h, MULTIPLE_32), round_side(w, MULTIPLE_32)
    graph = case.graph(bucket_h, bucket_w)
    padded = {}
    for name, value in inputs.items():
        padded[name] = np.zeros(graph.blob_shapes[name], np.float32)
        padded[name][:, :, :h, :w] = value
    extents = {name: np.array([h, w], np.int32) for name in inputs}
    params, state = case.params_and_state
    args = (params, state, padded, extents)
    key = (case.name, bucket_h, bucket_w)
    if key not in _padded_executables:
        _padded_executables[key] = compile_for(loss_and_grads(graph), args)
    return _padded_executables[key](*args)


def assert_close(padded, exact, what):
    """|padded - exact| <= 1e-5 max|exact| + 1e-6 everywhere, both finite, same shape."""
    padded, exact = np.asarray(padded, np.float64), np.asarray(exact, np.float64)
    assert padded.shape == exact.shape, f"{what}: shape {padded.shape}, exact run {exact.shape}"
    assert np.isfinite(exact).all(), f"{what}: the exact run is not finite"
    assert np.isfinite(padded).all(), f"{what}: not finite (the exact run is)"
    tolerance = 1e-5 * np.max(np.abs(exact), initial=0.0) + 1e-6
    error = np.max(np.abs(padded - exact), initial=0.0)
    assert error <= tolerance, f"{what}: max |padded - exact| = {error:.3g} > {tolerance:.3g}"


def true_shape_view(value, shape):
    """A padded 4-axis blob cut to its true (exact-run) shape."""
    value = np.asarray(value)
    return value[:, :, :shape[2], :shape[3]] if len(shape) == 4 else value


def compare_runs(exact_graph, exact_run, padded_run, where):
    (exact_loss, (exact_blobs, exact_state)), exact_grads = exact_run
    (padded_loss, (padded_blobs, padded_state)), padded_grads = padded_run
    assert_close(padded_loss, exact_loss, f"{where} loss")
    for name, shape in exact_graph.blob_shapes.items():
        assert_close(true_shape_view(padded_blobs[name], shape), exact_blobs[name],
                     f"{where} blob {name}")
    assert exact_grads.keys() == padded_grads.keys()
    for layer_name in exact_grads:
        for i, (p, e) in enumerate(zip(padded_grads[layer_name], exact_grads[layer_name])):
            assert_close(p, e, f"{where} gradient of {layer_name}[{i}]")
    for layer_name in exact_state:
        for i, (p, e) in enumerate(zip(padded_state[layer_name], exact_state[layer_name])):
            assert_close(p, e, f"{where} new state of {layer_name}[{i}]")


# ---------------------------------------------------------------- padded == exact, pure API

@pytest.mark.parametrize("case", CASES, ids=str)
def test_padded_run_equals_exact_run_at_random_sizes(case):
    rs = np.random.RandomState(3)
    assert len(set(case.sizes)) >= 20
    for h, w in case.sizes:
        inputs = case.random_inputs(rs, h, w)
        where = f"{case.name} at {h}x{w}"
        compare_runs(case.graph(h, w), run_exact(case, inputs, h, w),
                     run_padded(case, inputs, h, w), where)


def test_layer_mix_padded_values_are_nontrivial():
    """Guards the comparison above against vacuous agreement: the mix net's TRAIN pass
    changes BatchNorm's statistics, every loss is nonzero, the Power/Log/Exp chain and
    every param gradient are finite, and the max-pool mask holds indices that use the
    true width (a padded run indexing with the bucket width would differ)."""
    case = CASES[-1]
    h, w = 13, 9
    inputs = case.random_inputs(np.random.RandomState(4), h, w)
    (_, (blobs, new_state)), grads = run_padded(case, inputs, h, w)
    _, state = case.params_and_state
    for new, old in zip(new_state["bn_batch"], state["bn_batch"]):
        assert not np.allclose(new, old)
    for new, old in zip(new_state["bn_global"], state["bn_global"]):
        np.testing.assert_array_equal(new, old)
    for name in case.graph(h, w).blob_shapes:
        if name.startswith("loss_") or name.startswith("sigmoid") or name == "euclidean":
            assert float(blobs[name]) != 0.0, name
    for layer_name, arrays in grads.items():
        for i, g in enumerate(arrays):
            assert np.isfinite(np.asarray(g)).all(), f"gradient of {layer_name}[{i}]"
            assert np.abs(np.asarray(g)).max() > 0, f"gradient of {layer_name}[{i}] is zero"
    # maxpool: 3x3/2 pad 1 over scale (h - 2 = 11 by w - 2 = 7): windows start at rows and
    # columns -1, 1, 3, ...; each index is row * 7 + column of a cell in the 11x7 image
    mask = true_shape_view(blobs["maxpool_mask"], case.graph(h, w).blob_shapes["maxpool_mask"])
    assert mask.shape == (2, 6, 6, 4)
    rows, cols = mask // 7, mask % 7
    assert (mask == np.round(mask)).all() and (rows < 11).all() and (mask >= 0).all()
    window_row = np.arange(6)[None, None, :, None] * 2 - 1
    window_col = np.arange(4)[None, None, None, :] * 2 - 1
    assert ((rows >= window_row) & (rows < window_row + 3)).all()
    assert ((cols >= window_col) & (cols < window_col + 3)).all()


# ---------------------------------------------------------------- padded == exact, Net API

def fcn8s_net(buckets):
    """The FCN-8s-shaped net through ``netspec.Net``, with input diffs (force_backward)."""
    return netspec.Net(parse_net("force_backward: true\n" + FCN8S), phase=netspec.TRAIN,
                       buckets=buckets, seed=5)


def net_api_pass(net, data, label):
    """Forward and backward through the pycaffe-style API: outputs, every blob's data and
    diff, every param diff (cleared first: Caffe accumulates them)."""
    for name, value in (("data", data), ("label", label)):
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    outputs = {name: np.array(value) for name, value in net.forward().items()}
    net.clear_param_diffs()
    net.backward()
    blobs = {name: (blob.data.copy(), blob.diff.copy()) for name, blob in net.blobs.items()}
    param_diffs = {(layer_name, i): blob.diff.copy()
                   for layer_name, layer_blobs in net.params.items() for i, blob in enumerate(layer_blobs)}
    return outputs, blobs, param_diffs


def assert_net_passes_match(padded, exact, true_graph, where):
    (padded_out, padded_blobs, padded_params), (exact_out, exact_blobs, exact_params) = padded, exact
    assert padded_out.keys() == exact_out.keys() == {"loss"}
    assert_close(padded_out["loss"], exact_out["loss"], f"{where} output loss")
    assert padded_blobs.keys() == exact_blobs.keys()
    for name, (data, diff) in exact_blobs.items():
        # the user sees every blob at its true shape
        assert padded_blobs[name][0].shape == data.shape == true_graph.blob_shapes[name], name
        assert_close(padded_blobs[name][0], data, f"{where} {name}.data")
        assert_close(padded_blobs[name][1], diff, f"{where} {name}.diff")
    assert padded_params.keys() == exact_params.keys()
    for key, diff in exact_params.items():
        assert_close(padded_params[key], diff, f"{where} params {key[0]}[{key[1]}].diff")


@pytest.fixture(scope="module")
def exact_fcn8s():
    return fcn8s_net("off")


def fcn8s_inputs(rs, h, w):
    data = rs.randn(1, 3, h, w).astype(np.float32)
    label = rs.randint(0, CLASSES, (1, 1, h, w)).astype(np.float32)
    label[rs.rand(*label.shape) < 0.2] = IGNORE
    return data, label


def test_net_with_buckets_matches_net_without(exact_fcn8s):
    padded = fcn8s_net(32)
    for name, blobs in exact_fcn8s.params.items():   # same seed, same weights
        for mine, theirs in zip(padded.params[name], blobs):
            np.testing.assert_array_equal(mine.data, theirs.data)
    rs = np.random.RandomState(6)
    # three sizes in the 64x64 bucket, one in 32x64
    for h, w in [(40, 50), (64, 33), (57, 61), (12, 45)]:
        data, label = fcn8s_inputs(rs, h, w)
        padded_pass = net_api_pass(padded, data, label)
        plan = padded.plan()
        assert plan.padded
        assert plan.bucket == {"data": (1, 3, round_side(h, MULTIPLE_32), round_side(w, MULTIPLE_32)),
                               "label": (1, 1, round_side(h, MULTIPLE_32), round_side(w, MULTIPLE_32))}
        exact_pass = net_api_pass(exact_fcn8s, data, label)
        assert not exact_fcn8s.plan().padded
        assert_net_passes_match(padded_pass, exact_pass, plan.exact, f"Net at {h}x{w}")


def test_image_larger_than_every_listed_bucket_gets_its_own(exact_fcn8s):
    net = fcn8s_net([32, 64])
    data, label = fcn8s_inputs(np.random.RandomState(7), 100, 70)
    padded_pass = net_api_pass(net, data, label)
    plan = net.plan()
    # sides above the largest listed size round up to a multiple of 32: 100 -> 128, 70 -> 96
    assert plan.padded and plan.bucket["data"] == (1, 3, 128, 96)
    exact_pass = net_api_pass(exact_fcn8s, data, label)
    assert_net_passes_match(padded_pass, exact_pass, plan.exact, "Net at 100x70 in bucket 128x96")


def test_net_that_is_not_spatially_local_runs_exact_with_one_note(capsys):
    text = (inputs_layer(("data", (1, 3, 10, 12))) + conv("conv", "data", 4, 3, pad=1) + relu("conv")
            + layer("ip", "InnerProduct", ["conv"], body=(
                'inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } '
                'bias_filler { type: "gaussian" std: 0.5 } }')))
    net = netspec.Net(parse_net(text), phase=netspec.TEST, buckets=32)
    exact = netspec.Net(parse_net(text), phase=netspec.TEST, buckets="off")
    rs = np.random.RandomState(8)
    for _ in range(2):
        data = rs.randn(1, 3, 10, 12).astype(np.float32)
        out = net.forward(data=data)["ip"]
        assert_close(out, exact.forward(data=data)["ip"], "ip")
        assert out.shape == (1, 5)
    plan = net.bucketing.plan({"data": (1, 3, 10, 12)})
    assert not plan.padded and plan.extents is None
    assert plan.graph is plan.exact and plan.graph.blob_shapes["data"] == (1, 3, 10, 12)
    notes = [line for line in capsys.readouterr().err.splitlines() if "not local" in line]
    assert len(notes) == 1, notes
    assert '"ip" (InnerProduct)' in notes[0]


# ---------------------------------------------------------------- policies and strides

@pytest.mark.parametrize("value, policy", [
    (None, None), (False, None), ("off", None), (" OFF ", None), ("none", None), ("exact", None),
    ("auto", "auto"), (True, "auto"),
    (32, ("multiple", 32)), ("32", ("multiple", 32)), (1, ("multiple", 1)),
    ([512, 256, 384], ("sizes", (256, 384, 512))), ("256,384,512", ("sizes", (256, 384, 512))),
    ("384x256", ("sizes", (256, 384))), ((100,), ("sizes", (100,))),
])
def test_parse_policy(value, policy):
    assert parse_policy(value) == policy


@pytest.mark.parametrize("value", [0, -32, "0x5", "big", [0, 64], []])
def test_parse_policy_rejects(value):
    with pytest.raises(NetspecError):
        parse_policy(value)


@pytest.mark.parametrize("size, policy, side", [
    (1, ("multiple", 32), 32), (32, ("multiple", 32), 32), (33, ("multiple", 32), 64),
    (500, ("multiple", 32), 512), (375, ("multiple", 32), 384), (37, ("multiple", 1), 37),
    (100, ("multiple", 64), 128),
    (1, ("sizes", (256, 384, 512)), 256), (256, ("sizes", (256, 384, 512)), 256),
    (257, ("sizes", (256, 384, 512)), 384), (500, ("sizes", (256, 384, 512)), 512),
    # above every listed size: a bucket of its own, a multiple of 32
    (513, ("sizes", (256, 384, 512)), 544), (100, ("sizes", (32, 64)), 128),
    (70, ("sizes", (32, 64)), 96), (64, ("sizes", (32, 64)), 64),
])
def test_round_side(size, policy, side):
    assert round_side(size, policy) == side


def graph_of(text, h=40, w=40, phase=TRAIN):
    net_param = parse_net(text)
    declared = build_graph(net_param, phase)
    return build_graph(net_param, phase, input_shapes={
        name: declared.blob_shapes[name][:2] + (h, w) for name in declared.inputs})


# two 2x2/2 poolings after a stride-4 conv (16), upsampled by 2 (8): the coarsest is 16
STRIDE_16 = (inputs_layer(("data", (1, 3, 40, 40))) + conv("conv", "data", 2, 4, stride=4)
             + pool("pool1", "conv") + pool("pool2", "pool1") + deconv("up", "pool2", 2, 4, 2))
# a stride-8 conv and an 8x8/8 pooling: 64
STRIDE_64 = (inputs_layer(("data", (1, 3, 130, 130))) + conv("conv", "data", 2, 8, stride=8)
             + pool("pool", "conv", 8, 8))


@pytest.mark.parametrize("text, stride", [(FCN32S, 32), (FCN16S, 32), (FCN8S, 32), (FCN_ALEXNET, 32),
                                          (MIX, 4), (STRIDE_16, 16), (STRIDE_64, 64)],
                         ids=["fcn32s", "fcn16s", "fcn8s", "fcn_alexnet", "layer_mix", "16", "64"])
def test_coarsest_stride(text, stride):
    assert coarsest_stride(graph_of(text, 130, 130)) == stride


def _auto_bucketing(text):
    net_param = parse_net(text)
    return Bucketing(lambda shapes: build_graph(net_param, TRAIN, input_shapes=shapes), "auto")


def test_auto_policy_runs_the_first_shapes_exact_and_buckets_from_the_second():
    bucketing = _auto_bucketing(STRIDE_16)
    first = bucketing.plan({"data": (1, 3, 17, 100)})
    assert not first.padded and first.graph is first.exact
    assert first.graph.blob_shapes["data"] == (1, 3, 17, 100)
    second = bucketing.plan({"data": (1, 3, 40, 50)})
    assert second.padded and second.bucket == {"data": (1, 3, 64, 64)}
    # the first shapes keep their exact plan (and executable); an explicit policy pads at once
    assert bucketing.plan({"data": (1, 3, 17, 100)}) is first
    net_param = parse_net(STRIDE_16)
    multiple = Bucketing(lambda shapes: build_graph(net_param, TRAIN, input_shapes=shapes), 32)
    assert multiple.plan({"data": (1, 3, 17, 100)}).bucket == {"data": (1, 3, 32, 128)}


def test_auto_policy_rounds_to_the_coarsest_stride_when_it_exceeds_32():
    def second_plan(text, shapes):
        bucketing = _auto_bucketing(text)
        bucketing.plan({name: shape[:2] + (5 * 32, 5 * 32) for name, shape in shapes.items()})
        return bucketing.plan(shapes)
    plan = second_plan(STRIDE_64, {"data": (1, 3, 130, 70)})
    assert plan.padded and plan.bucket == {"data": (1, 3, 192, 128)}
    assert plan.exact.blob_shapes["data"] == (1, 3, 130, 70)
    plan = second_plan(FCN8S, {"data": (1, 3, 33, 20), "label": (1, 1, 33, 20)})
    assert plan.bucket == {"data": (1, 3, 64, 32), "label": (1, 1, 64, 32)}
    plan = second_plan(STRIDE_16, {"data": (1, 3, 17, 100)})
    assert plan.bucket == {"data": (1, 3, 32, 128)}


# ---------------------------------------------------------------- extents follow Caffe's sizes

EXTENT_NETS = {
    "convolution": conv("a", "data", 2, 3, pad=1, stride=2) + conv("b", "a", 2, 5, stride=3, pad=0)
    + layer("c", "Convolution", ["b"], body=(
        "convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 "
        "stride_h: 1 stride_w: 2 }")),
    "dilated convolution": conv("a", "data", 2, 3, pad=2, dilation=3, stride=2)
    + conv("b", "a", 2, 2, dilation=2),
    "deconvolution": conv("a", "data", 4, 3, stride=2) + deconv("b", "a", 4, 4, 2, group=2)
    + layer("c", "Deconvolution", ["b"], body=(
        "convolution_param { num_output: 2 kernel_size: 3 stride: 3 pad: 1 dilation: 2 }")),
    "max pooling, ceil, pad": pool("a", "data", 3, 2, pad=1) + pool("b", "a", 2, 2, pad=1)
    + pool("c", "b", 2, 3),
    "ave pooling, floor, pad": pool("a", "data", 3, 2, pad=1, method="AVE", extra="round_mode: FLOOR")
    + pool("b", "a", 3, 3, pad=2, method="AVE", extra="round_mode: FLOOR"),
    "max pooling mask": pool("a", "data", 3, 2, pad=1, tops=["a", "a_mask"]),
    "crop": conv("a", "data", 2, 3, pad=4) + crop("b", "a", "data", 3)
    + layer("c", "Crop", ["a", "data"], body="crop_param { axis: 2 offset: 1 offset: 6 }")
    + conv("d", "data", 2, 5) + layer("e", "Crop", ["a", "d"], body="crop_param { axis: 3 offset: 2 }"),
    "softmax with loss, probabilities": conv("score", "data", 3, 3, pad=1)
    + softmax_loss("loss", "score", "label", "", tops=["loss", "prob"]),
    "lrn, batch norm, eltwise, concat": lrn("a", "data", 3) + layer("b", "BatchNorm", ["a"])
    + eltwise("c", ["a", "b"], "PROD") + layer("d", "Concat", ["c", "data"]),
}


@pytest.mark.parametrize("text", [
    *[inputs_layer(("data", (1, 3, 40, 40)), ("label", (1, 1, 40, 40))) + t for t in EXTENT_NETS.values()],
    FCN32S, FCN16S, FCN8S, FCN_ALEXNET, MIX,
], ids=[*EXTENT_NETS, "fcn32s", "fcn16s", "fcn8s", "fcn_alexnet", "layer_mix"])
def test_blob_extents_equal_the_exact_shapes(text):
    """``blob_extents`` on the bucket graph (Python ints) gives every 4-axis blob the
    spatial size ``build_graph`` gives it at the true size."""
    rs = np.random.RandomState(9)
    checked = 0
    for _ in range(40):
        h, w = (int(v) for v in rs.randint(1, 90, 2))
        try:
            exact = graph_of(text, h, w)
        except NetspecError:    # the layers do not fit this size
            continue
        bucket = graph_of(text, round_side(h, MULTIPLE_32), round_side(w, MULTIPLE_32))
        extents = compiler.blob_extents(bucket, {name: (h, w) for name in bucket.inputs})
        for name, shape in exact.blob_shapes.items():
            if len(shape) == 4:
                assert name in extents, f"{name} at {h}x{w} has no extent"
                assert tuple(int(v) for v in extents[name]) == shape[2:], f"{name} at {h}x{w}"
        checked += 1
    assert checked >= 20

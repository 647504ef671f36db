"""A script written for pycaffe runs with only its import changed to
``import netspec as caffe``, and its numbers match a NumPy transcription of the net."""
import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

TRAIN_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 5
          weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

DEPLOY_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""

# A pycaffe script, as a user would have it.  Only its import line is changed.
PYCAFFE_SCRIPT = '''
import numpy as np
import caffe

caffe.set_mode_cpu()
net = caffe.Net(train_proto, caffe.TRAIN)
shapes = [(k, v.data.shape) for k, v in net.blobs.items()]
param_shapes = [(k, v[0].data.shape, v[1].data.shape) for k, v in net.params.items()]
net.blobs['data'].data[...] = x
net.blobs['label'].data[...] = labels
out = net.forward()
loss = float(out['loss'])
pool1 = net.blobs['pool1'].data.copy()
ip1 = net.blobs['ip1'].data.copy()
net.backward()
conv1_w_diff = net.params['conv1'][0].diff.copy()
conv1_b_diff = net.params['conv1'][1].diff.copy()
ip1_w_diff = net.params['ip1'][0].diff.copy()
ip1_diff = net.blobs['ip1'].diff.copy()
weights = {k: [b.data.copy() for b in v] for k, v in net.params.items()}
net.save(weights_path)

deployed = caffe.Net(deploy_proto, weights_path, caffe.TEST)
deployed.blobs['data'].data[...] = x
prob = deployed.forward()['prob'].copy()
inputs, outputs = list(deployed.inputs), list(deployed.outputs)
'''


def run_ported_script(tmp_path, x, labels):
    source = PYCAFFE_SCRIPT
    assert source.count("\nimport caffe\n") == 1
    source = source.replace("\nimport caffe\n", "\nimport netspec as caffe\n")
    (tmp_path / "train.prototxt").write_text(TRAIN_NET)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY_NET)
    namespace = {"train_proto": str(tmp_path / "train.prototxt"),
                 "deploy_proto": str(tmp_path / "deploy.prototxt"),
                 "weights_path": str(tmp_path / "tiny.caffemodel"),
                 "x": x, "labels": labels}
    exec(compile(source, "pycaffe_script.py", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------ NumPy reference

def conv_forward(x, w, b, pad):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b[None, :, None, None], xp


def conv_weight_grad(xp, dout, kh, kw):
    _, _, oh, ow = dout.shape
    dw = np.zeros((dout.shape[1], xp.shape[1], kh, kw))
    for i in range(kh):
        for j in range(kw):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", dout, xp[:, :, i:i + oh, j:j + ow])
    return dw, dout.sum(axis=(0, 2, 3))


def max_pool_2x2(x):
    """2x2 stride-2 max pooling and, per output, the flat window index of the first maximum."""
    n, c, h, w = x.shape
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    return windows.max(-1), windows.argmax(-1)   # argmax: first maximum, like Caffe's strict >


def max_pool_backward(dout, argmax, shape):
    n, c, h, w = shape
    onehot = np.eye(4)[argmax] * dout[..., None]
    return onehot.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(shape)


def reference(weights, x, labels):
    (wc, bc), (wi, bi) = weights["conv1"], weights["ip1"]
    x64 = x.astype(np.float64)
    conv, xp = conv_forward(x64, wc, bc, pad=1)
    relu = np.maximum(conv, 0)
    pool, argmax = max_pool_2x2(relu)
    flat = pool.reshape(len(x), -1)
    logits = flat @ wi.T + bi
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    prob = shifted / shifted.sum(1, keepdims=True)
    n = len(x)
    idx = labels.astype(int)
    loss = -np.log(prob[np.arange(n), idx]).sum() / n       # VALID normalization: no ignored labels
    dlogits = prob.copy()
    dlogits[np.arange(n), idx] -= 1
    dlogits /= n
    dwi = dlogits.T @ flat
    dpool = (dlogits @ wi).reshape(pool.shape)
    drelu = max_pool_backward(dpool, argmax, relu.shape) * (conv > 0)
    dwc, dbc = conv_weight_grad(xp, drelu, 3, 3)
    return dict(loss=loss, pool1=pool, ip1=logits, prob=prob, dlogits=dlogits, dwi=dwi, dwc=dwc, dbc=dbc)


def test_pycaffe_script_runs_unchanged_and_matches_numpy(tmp_path):
    rs = np.random.RandomState(0)
    x = rs.randn(2, 3, 8, 8).astype(np.float32)
    labels = np.array([1, 4], np.float32)
    ns = run_ported_script(tmp_path, x, labels)

    assert ns["shapes"] == [("data", (2, 3, 8, 8)), ("label", (2,)), ("conv1", (2, 4, 8, 8)),
                            ("pool1", (2, 4, 4, 4)), ("ip1", (2, 5)), ("loss", ())]
    assert ns["param_shapes"] == [("conv1", (4, 3, 3, 3), (4,)), ("ip1", (5, 64), (5,))]
    ref = reference({k: [a.astype(np.float64) for a in v] for k, v in ns["weights"].items()}, x, labels)

    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["pool1"], ref["pool1"], **tol)
    np.testing.assert_allclose(ns["ip1"], ref["ip1"], **tol)
    np.testing.assert_allclose(ns["loss"], ref["loss"], **tol)
    np.testing.assert_allclose(ns["ip1_diff"], ref["dlogits"], **tol)
    np.testing.assert_allclose(ns["ip1_w_diff"], ref["dwi"], **tol)
    np.testing.assert_allclose(ns["conv1_w_diff"], ref["dwc"], **tol)
    np.testing.assert_allclose(ns["conv1_b_diff"], ref["dbc"], **tol)
    assert np.abs(ns["conv1_w_diff"]).max() > 1e-3

    # the second net loaded the saved weights by layer name
    assert ns["inputs"] == ["data"] and ns["outputs"] == ["prob"]
    np.testing.assert_allclose(ns["prob"], ref["prob"], **tol)


def test_forward_all_pads_the_last_batch_and_keeps_the_batch_size(tmp_path):
    """pycaffe's forward_all: batches of the net's batch size, the last padded with zeros,
    outputs cut back to N; the input blob keeps its batch size (no new compile)."""
    import netspec as caffe
    (tmp_path / "deploy.prototxt").write_text(DEPLOY_NET.replace("dim: 2 dim: 3", "dim: 4 dim: 3"))
    lines = []
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST, log=lines.append)
    x = np.random.RandomState(0).randn(10, 3, 8, 8).astype(np.float32)
    out = net.forward_all(data=x, blobs=["pool1"])
    assert out["prob"].shape == (10, 5) and out["pool1"].shape == (10, 4, 4, 4)
    assert net.blobs["data"].shape == (4, 3, 8, 8)
    assert len([line for line in lines if line.startswith("Compiled")]) == 1
    w, b = net.params["ip1"][0].data, net.params["ip1"][1].data
    z = out["pool1"].reshape(10, -1) @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(out["prob"], p / p.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    # the padded items are zeros: the last batch's first two items are x[8:10]
    np.testing.assert_allclose(net.blobs["data"].data[:2], x[8:], rtol=0)
    assert np.all(net.blobs["data"].data[2:] == 0)

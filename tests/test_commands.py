"""The FCN-side commands end to end: surgery, infer, quickstart (on tiny stand-ins)."""
import os

import numpy as np
import pytest
from PIL import Image

import netspec
from netspec.caffemodel import load_weights
from netspec.cli import main
from netspec.proto import caffe_pb2
from netspec.surgery import bilinear_kernel

CLASSIFIER_V1 = """
name: "tiny_vgg"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layers { name: "conv1_1" type: CONVOLUTION bottom: "data" top: "conv1_1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layers { name: "relu1_1" type: RELU bottom: "conv1_1" top: "conv1_1" }
layers { name: "pool1" type: POOLING bottom: "conv1_1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc6" type: INNER_PRODUCT bottom: "pool1" top: "fc6" inner_product_param { num_output: 8 } }
layers { name: "relu6" type: RELU bottom: "fc6" top: "fc6" }
layers { name: "fc7" type: INNER_PRODUCT bottom: "fc6" top: "fc7" inner_product_param { num_output: 8 } }
layers { name: "fc8" type: INNER_PRODUCT bottom: "fc7" top: "fc8" inner_product_param { num_output: 10 } }
"""

# The FCN form of the classifier: fc6/fc7 as convolutions, a zero-initialized score
# layer, a fixed bilinear upsampling and the crop back to the input, trained from a
# Python data layer as the reference nets are.
FCN_TEMPLATE = """
name: "tiny_fcn"
layer {{ name: "data" type: "Python" top: "data" top: "label"
  python_param {{ module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{{}}" }} }}
layer {{ name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: {pad} }} }}
layer {{ name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc6" type: "Convolution" bottom: "pool1" top: "fc6" convolution_param {{ num_output: 8 kernel_size: 4 }} }}
layer {{ name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }}
layer {{ name: "fc7" type: "Convolution" bottom: "fc6" top: "fc7" convolution_param {{ num_output: 8 kernel_size: 1 }} }}
layer {{ name: "score_fr" type: "Convolution" bottom: "fc7" top: "score_fr" convolution_param {{ num_output: 3 kernel_size: 1 }} }}
layer {{ name: "upscore" type: "Deconvolution" bottom: "score_fr" top: "upscore" param {{ lr_mult: 0 }}
  convolution_param {{ num_output: 3 bias_term: false kernel_size: 4 stride: 2 }} }}
layer {{ name: "score" type: "Crop" bottom: "upscore" bottom: "data" top: "score" crop_param {{ axis: 2 offset: 5 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param {{ normalize: false ignore_label: 255 }} }}
"""

DEPLOY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1_1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "Convolution" bottom: "pool1" top: "fc6" convolution_param { num_output: 8 kernel_size: 4 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "Convolution" bottom: "fc6" top: "fc7" convolution_param { num_output: 8 kernel_size: 1 } }
"""


def _write_v1_caffemodel(path, rs):
    """A V1 caffemodel with legacy 4-D blob dims, as VGG_ILSVRC_16_layers.caffemodel is."""
    shapes = {"conv1_1": [(4, 3, 3, 3), (4,)], "fc6": [(8, 64), (8,)], "fc7": [(8, 8), (8,)],
              "fc8": [(10, 8), (10,)]}
    net = caffe_pb2.NetParameter(name="tiny_vgg")
    arrays = {}
    for name, blob_shapes in shapes.items():
        layer = net.layers.add(name=name)
        arrays[name] = []
        for shape in blob_shapes:
            a = rs.randn(*shape).astype(np.float32)
            arrays[name].append(a)
            legacy = (1,) * (4 - len(shape)) + shape
            blob = layer.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
            blob.data.extend(a.ravel().tolist())
    with open(path, "wb") as f:
        f.write(net.SerializeToString())
    return arrays


def test_vgg16_to_fcn_surgery_preserves_the_classifier(tmp_path):
    rs = np.random.RandomState(0)
    classifier = tmp_path / "classifier.prototxt"
    classifier.write_text(CLASSIFIER_V1)
    weights = tmp_path / "classifier.caffemodel"
    arrays = _write_v1_caffemodel(weights, rs)
    fcn = tmp_path / "train.prototxt"
    fcn.write_text(FCN_TEMPLATE.format(pad=100))
    out = tmp_path / "fcn-init.caffemodel"
    assert main(["surgery", "vgg16-to-fcn", "--vgg-weights", str(weights), "--fcn-model", str(fcn),
                 "--out", str(out)]) == 0

    got = load_weights(str(out))
    np.testing.assert_array_equal(got["fc6"][0], arrays["fc6"][0].reshape(8, 4, 4, 4))
    np.testing.assert_array_equal(got["fc7"][0], arrays["fc7"][0].reshape(8, 8, 1, 1))
    np.testing.assert_array_equal(got["conv1_1"][0], arrays["conv1_1"][0])
    assert "fc8" not in got
    assert not got["score_fr"][0].any() and not got["score_fr"][1].any()    # no filler: zeros
    up = got["upscore"][0]
    for i in range(3):
        for j in range(3):
            expected = bilinear_kernel(4) if i == j else np.zeros((4, 4))
            np.testing.assert_allclose(up[i, j], expected)
    np.testing.assert_allclose(bilinear_kernel(4), np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]))

    # the fully convolutional net at the classifier's input size (pad 1 as the
    # classifier has) computes the classifier's fc7 at its single output location
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY)
    x = rs.randn(1, 3, 8, 8).astype(np.float32)
    conv_net = netspec.Net(str(deploy), str(out), netspec.TEST)
    conv_fc7 = conv_net.forward(data=x)["fc7"]
    ip_net = netspec.Net(str(classifier), str(weights), netspec.TEST)
    ip_fc7 = ip_net.forward(data=x, blobs=["fc7"])["fc7"]
    assert conv_fc7.shape == (1, 8, 1, 1)
    np.testing.assert_allclose(conv_fc7[:, :, 0, 0], ip_fc7, rtol=1e-4, atol=1e-4)


def test_infer_writes_argmax_palette_and_overlay(tmp_path):
    net_file = tmp_path / "deploy.prototxt"
    net_file.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
""")
    rs = np.random.RandomState(1)
    w, b = rs.randn(3, 3, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)
    from netspec.caffemodel import write_caffemodel
    write_caffemodel(str(tmp_path / "w.caffemodel"), None, {"score": [w, b]})
    rgb = rs.randint(0, 256, (7, 9, 3)).astype(np.uint8)            # a size the net did not declare
    Image.fromarray(rgb).save(tmp_path / "img.png")
    assert main(["infer", "--model", str(net_file), "--weights", str(tmp_path / "w.caffemodel"),
                 "--mean", "10,20,30", "--out", str(tmp_path / "out"), str(tmp_path / "img.png")]) == 0
    bgr = rgb[:, :, ::-1].astype(np.float64) - np.array([10, 20, 30])
    expected = (np.einsum("oc,hwc->ohw", w[:, :, 0, 0], bgr) + b[:, None, None]).argmax(0)
    label = np.asarray(Image.open(tmp_path / "out" / "img.png"))
    np.testing.assert_array_equal(label, expected)
    assert Image.open(tmp_path / "out" / "img.png").mode == "P"
    assert Image.open(tmp_path / "out" / "img_overlay.jpg").size == (9, 7)


def test_surgery_errors_are_one_line(tmp_path, capsys):
    assert main(["surgery", "transplant", "--weights", str(tmp_path / "missing.caffemodel"),
                 "--model", str(tmp_path / "missing.prototxt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing" in err


def test_quickstart_runs_end_to_end_at_toy_scale(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--iters", "3", "--train-images", "3",
                 "--val-images", "2", "--size", "24"]) == 0
    printed = capsys.readouterr().out
    assert "mean IU" in printed
    for name in ("scores.txt", "training_curve.png", "train.log", "solver.prototxt", "val.prototxt",
                 "predictions/val_00.png", "predictions/val_01_overlay.jpg",
                 "quickstart-fcn8s_iter_3.caffemodel"):
        assert os.path.exists(out / name), name
    mean_iu = float([l for l in (out / "scores.txt").read_text().splitlines() if l.startswith("mean IU")][0].split()[-1])
    assert 0.0 <= mean_iu <= 100.0


def test_quickstart_solver_defaults_to_the_model_solver(tmp_path):
    from netspec.commands.quickstart import MODEL_DIR, load_model_module, make_solver_param
    from netspec.prototxt import parse_solver
    model = load_model_module()
    sp = make_solver_param(model, str(tmp_path), (1.0, 2.0, 3.0), None, str(tmp_path / "snap"), 0)
    reference = parse_solver(os.path.join(MODEL_DIR, "solver.prototxt"))
    assert sp.max_iter == reference.max_iter and sp.type == reference.type
    assert sp.base_lr == reference.base_lr and not sp.test_iter
    data = [l for l in sp.train_net_param.layer if l.type == "Python"][0]
    assert str(tmp_path) in data.python_param.param_str
    assert make_solver_param(model, str(tmp_path), (1, 2, 3), 7, "p", 0).max_iter == 7


SEG_LAYER = '''
import numpy as np
import netspec

class Tiles(netspec.Layer):
    """Deterministic 2-channel images and 3-class labels (255 on the first column)."""
    def setup(self, bottom, top):
        self.rs = np.random.RandomState(5)
    def reshape(self, bottom, top):
        top[0].reshape(1, 2, 4, 5)
        top[1].reshape(1, 1, 4, 5)
    def forward(self, bottom, top):
        top[0].data[...] = self.rs.randn(1, 2, 4, 5)
        label = self.rs.randint(0, 3, (1, 1, 4, 5))
        label[..., 0] = 255
        top[1].data[...] = label
'''

SEG_NET = '''
layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "tiles" layer: "Tiles" } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 } }
'''


def test_training_scores_segmentation_at_test_time(tmp_path, monkeypatch):
    from netspec.caffemodel import write_caffemodel
    from netspec.score import fast_hist, scores
    from netspec.solver import Log, Solver
    import io
    (tmp_path / "tiles.py").write_text(SEG_LAYER)
    (tmp_path / "net.prototxt").write_text(SEG_NET)
    (tmp_path / "solver.prototxt").write_text(
        'train_net: "net.prototxt"\ntest_net: "net.prototxt"\ntest_iter: 3\ntest_interval: 1\n'
        'base_lr: 0\nlr_policy: "fixed"\nmax_iter: 1\nsnapshot_after_train: false\n')
    rs = np.random.RandomState(0)
    w, b = rs.randn(3, 2, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)
    write_caffemodel(str(tmp_path / "w.caffemodel"), None, {"score": [w, b]})
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO()
    solver = Solver("solver.prototxt", log=Log(stream), weights=["w.caffemodel"])
    solver.score_classes = 3
    result = solver.test(0)["segmentation"]

    data_rs, hist = np.random.RandomState(5), np.zeros((3, 3), np.int64)   # the layer's own sequence
    for _ in range(3):
        x = data_rs.randn(1, 2, 4, 5)
        label = data_rs.randint(0, 3, (1, 1, 4, 5))
        label[..., 0] = 255
        predicted = (np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]).argmax(1)
        hist += fast_hist(label.ravel(), predicted.ravel(), 3)
    expected = scores(hist)
    assert hist.sum() == 3 * 4 * 4
    assert result["mean_iu"] == pytest.approx(expected["mean_iu"])
    assert f"mean IU = {expected['mean_iu']:.6g}" in stream.getvalue()


def test_netspec_test_reports_the_mean_loss_and_outputs(tmp_path, monkeypatch, capsys):
    from netspec.caffemodel import write_caffemodel
    (tmp_path / "tiles.py").write_text(SEG_LAYER)
    (tmp_path / "net.prototxt").write_text(SEG_NET)
    rs = np.random.RandomState(0)
    w, b = rs.randn(3, 2, 1, 1).astype(np.float32), rs.randn(3).astype(np.float32)
    write_caffemodel(str(tmp_path / "w.caffemodel"), None, {"score": [w, b]})
    monkeypatch.chdir(tmp_path)
    assert main(["test", "--model", "net.prototxt", "--weights", "w.caffemodel", "--iterations", "2"]) == 0
    logged = capsys.readouterr().err

    data_rs, losses = np.random.RandomState(5), []       # the data layer's own sequence
    for _ in range(2):
        x = data_rs.randn(1, 2, 4, 5)
        label = data_rs.randint(0, 3, (1, 1, 4, 5))
        label[..., 0] = 255
        z = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        valid = label[:, 0] != 255
        picked = np.take_along_axis(logp, np.where(valid, label[:, 0], 0)[:, None], 1)[:, 0]
        losses.append(-picked[valid].sum() / valid.sum())          # VALID normalization
    reported = float(logged.split("Loss: ")[1].split()[0])
    assert reported == pytest.approx(np.mean(losses), rel=1e-5)
    assert "Batch 1, loss = " in logged

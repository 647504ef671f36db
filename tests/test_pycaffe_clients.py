"""pycaffe clients run on netspec: BVLC's ``python/classify.py`` (``caffe.Classifier``), the
download-free cells of ``examples/00-classification.ipynb`` and ``examples/net_surgery.ipynb``,
and ``caffe.Detector``, each with ``import caffe`` changed to ``import netspec as caffe``, on a
small generated "CaffeNet", generated images and means, against a NumPy transcription of the
whole pipeline (load, resize, crop, preprocess, forward, average)."""
import glob
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import netspec as caffe
from test_pycaffe_io import np_resize_image, np_resize_unit

jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]

# BVLC/caffe python/classify.py (BSD 2-Clause, (c) the Caffe contributors), at commit
# 9b891540183ddc834a02b2bd81b31afae71b2153, verbatim: it is valid Python 3 as it stands, so
# nothing but its import line is changed (by run_classify_py below).
CLASSIFY_PY = r'''#!/usr/bin/env python
"""
classify.py is an out-of-the-box image classifer callable from the command line.

By default it configures and runs the Caffe reference ImageNet model.
"""
import numpy as np
import os
import sys
import argparse
import glob
import time

import caffe


def main(argv):
    pycaffe_dir = os.path.dirname(__file__)

    parser = argparse.ArgumentParser()
    # Required arguments: input and output files.
    parser.add_argument(
        "input_file",
        help="Input image, directory, or npy."
    )
    parser.add_argument(
        "output_file",
        help="Output npy filename."
    )
    # Optional arguments.
    parser.add_argument(
        "--model_def",
        default=os.path.join(pycaffe_dir,
                "../models/bvlc_reference_caffenet/deploy.prototxt"),
        help="Model definition file."
    )
    parser.add_argument(
        "--pretrained_model",
        default=os.path.join(pycaffe_dir,
                "../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel"),
        help="Trained model weights file."
    )
    parser.add_argument(
        "--gpu",
        action='store_true',
        help="Switch for gpu computation."
    )
    parser.add_argument(
        "--center_only",
        action='store_true',
        help="Switch for prediction from center crop alone instead of " +
             "averaging predictions across crops (default)."
    )
    parser.add_argument(
        "--images_dim",
        default='256,256',
        help="Canonical 'height,width' dimensions of input images."
    )
    parser.add_argument(
        "--mean_file",
        default=os.path.join(pycaffe_dir,
                             'caffe/imagenet/ilsvrc_2012_mean.npy'),
        help="Data set image mean of [Channels x Height x Width] dimensions " +
             "(numpy array). Set to '' for no mean subtraction."
    )
    parser.add_argument(
        "--input_scale",
        type=float,
        help="Multiply input features by this scale to finish preprocessing."
    )
    parser.add_argument(
        "--raw_scale",
        type=float,
        default=255.0,
        help="Multiply raw input by this scale before preprocessing."
    )
    parser.add_argument(
        "--channel_swap",
        default='2,1,0',
        help="Order to permute input channels. The default converts " +
             "RGB -> BGR since BGR is the Caffe default by way of OpenCV."
    )
    parser.add_argument(
        "--ext",
        default='jpg',
        help="Image file extension to take as input when a directory " +
             "is given as the input file."
    )
    args = parser.parse_args()

    image_dims = [int(s) for s in args.images_dim.split(',')]

    mean, channel_swap = None, None
    if args.mean_file:
        mean = np.load(args.mean_file)
    if args.channel_swap:
        channel_swap = [int(s) for s in args.channel_swap.split(',')]

    if args.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")

    # Make classifier.
    classifier = caffe.Classifier(args.model_def, args.pretrained_model,
            image_dims=image_dims, mean=mean,
            input_scale=args.input_scale, raw_scale=args.raw_scale,
            channel_swap=channel_swap)

    # Load numpy array (.npy), directory glob (*.jpg), or image file.
    args.input_file = os.path.expanduser(args.input_file)
    if args.input_file.endswith('npy'):
        print("Loading file: %s" % args.input_file)
        inputs = np.load(args.input_file)
    elif os.path.isdir(args.input_file):
        print("Loading folder: %s" % args.input_file)
        inputs =[caffe.io.load_image(im_f)
                 for im_f in glob.glob(args.input_file + '/*.' + args.ext)]
    else:
        print("Loading file: %s" % args.input_file)
        inputs = [caffe.io.load_image(args.input_file)]

    print("Classifying %d inputs." % len(inputs))

    # Classify.
    start = time.time()
    predictions = classifier.predict(inputs, not args.center_only)
    print("Done in %.2f s." % (time.time() - start))

    # Save
    print("Saving results into %s" % args.output_file)
    np.save(args.output_file, predictions)


if __name__ == '__main__':
    main(sys.argv)
'''

# A small CaffeNet: the layer names the notebooks read (conv1, pool5, fc6, fc7, fc8, prob).
CAFFENET = """
name: "TinyCaffeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool5" type: "Pooling" bottom: "conv1" top: "pool5"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 12 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 10 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

# net_surgery's fully convolutional version: fc6/fc7/fc8 cast to convolutions.
CAFFENET_FULL_CONV = """
name: "TinyCaffeNetConv"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 40 dim: 48 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool5" type: "Pooling" bottom: "conv1" top: "pool5"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6-conv" type: "Convolution" bottom: "pool5" top: "fc6-conv"
        convolution_param { num_output: 12 kernel_size: 16 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6-conv" top: "fc6-conv" }
layer { name: "fc7-conv" type: "Convolution" bottom: "fc6-conv" top: "fc7-conv"
        convolution_param { num_output: 10 kernel_size: 1 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7-conv" top: "fc7-conv" }
layer { name: "fc8-conv" type: "Convolution" bottom: "fc7-conv" top: "fc8-conv"
        convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "prob" type: "Softmax" bottom: "fc8-conv" top: "prob" }
"""

# examples/net_surgery/conv.prototxt
SURGERY_CONV = """
name: "convolution"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 1 dim: 100 dim: 100 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 5 stride: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
"""


# ------------------------------------------------------------------ NumPy reference

def np_conv(x, w, b, pad=0):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out + b[None, :, None, None]


def np_max_pool_2x2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_caffenet(x, weights):
    """The blobs of CAFFENET for inputs x (float64; in-place ReLUs as Caffe leaves them)."""
    w = {k: [a.astype(np.float64) for a in v] for k, v in weights.items()}
    blobs = {"conv1": np.maximum(np_conv(x.astype(np.float64), *w["conv1"], pad=1), 0)}
    blobs["pool5"] = np_max_pool_2x2(blobs["conv1"])
    flat = blobs["pool5"].reshape(len(x), -1)
    blobs["fc6"] = np.maximum(flat @ w["fc6"][0].T + w["fc6"][1], 0)
    blobs["fc7"] = np.maximum(blobs["fc6"] @ w["fc7"][0].T + w["fc7"][1], 0)
    blobs["fc8"] = blobs["fc7"] @ w["fc8"][0].T + w["fc8"][1]
    blobs["prob"] = np_softmax(blobs["fc8"])
    return blobs


def np_load_rgb(path):
    """An image file as float32 RGB in [0, 1] (gray files repeated to 3 channels)."""
    return (np.asarray(Image.open(path).convert("RGB"), np.float64) / 255.0).astype(np.float32)


def np_preprocess(image, mean, raw_scale=255.0, channel_swap=(2, 1, 0), input_scale=None):
    """Transformer.preprocess on an (H, W, 3) image of the input's size."""
    x = image.astype(np.float64).transpose(2, 0, 1)[list(channel_swap)] * raw_scale - mean
    return x * input_scale if input_scale is not None else x


def np_resized_mean(mean, dims):
    lo, hi = mean.min(), mean.max()
    return np_resize_unit(((mean - lo) / (hi - lo)).transpose(1, 2, 0), dims).transpose(2, 0, 1) * (hi - lo) + lo


def np_classify(images, weights, image_dims, crop, mean, oversample, **preprocess):
    """classify.py's Classifier.predict, in NumPy."""
    probs = []
    for im in images:
        r = np_resize_image(im, image_dims)
        h, w = image_dims
        cy, cx = int(h / 2.0 - crop / 2.0), int(w / 2.0 - crop / 2.0)
        boxes = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (cy, cx)] if oversample else [(cy, cx)]
        crops = [r[y:y + crop, x:x + crop] for y, x in boxes]
        if oversample:
            crops += [c[:, ::-1] for c in crops]
        x = np.stack([np_preprocess(c, mean, **preprocess) for c in crops])
        probs.append(np_caffenet(x, weights)["prob"].mean(0))
    return np.stack(probs)


# ------------------------------------------------------------------ fixtures

def smooth_image(rng, h, w, channels=3):
    """A photo-like image (smooth, so that JPEG keeps it close), uint8."""
    coarse = rng.random((h // 4 + 2, w // 4 + 2, channels))
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    img = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8).squeeze()).resize((w, h), bilinear))
    return img


@pytest.fixture(scope="module")
def caffe_root(tmp_path_factory):
    """A caffe_root tree as the examples expect it, with generated files: the CaffeNet
    deploy and its weights, the ImageNet mean, labels, cat.jpg / cat_gray.jpg and the
    net_surgery prototxts.  Returns (root, weights dict)."""
    root = tmp_path_factory.mktemp("caffe_root")
    rng = np.random.default_rng(0)
    model_dir = root / "models" / "bvlc_reference_caffenet"
    model_dir.mkdir(parents=True)
    (model_dir / "deploy.prototxt").write_text(CAFFENET)
    net = caffe.Net(str(model_dir / "deploy.prototxt"), caffe.TEST)
    scales = {"conv1": 0.005, "fc6": 0.03, "fc7": 0.3, "fc8": 0.4}   # probabilities well inside (0, 1)
    weights = {}
    for name, blobs in net.params.items():
        for blob in blobs:
            blob.data[...] = rng.standard_normal(blob.data.shape) * scales[name]
        weights[name] = [b.data.copy() for b in blobs]
    net.save(str(model_dir / "bvlc_reference_caffenet.caffemodel"))

    mean_dir = root / "python" / "caffe" / "imagenet"
    mean_dir.mkdir(parents=True)
    np.save(mean_dir / "ilsvrc_2012_mean.npy", 60 + rng.random((3, 40, 40)) * 120)     # (C, H, W), BGR
    labels_dir = root / "data" / "ilsvrc12"
    labels_dir.mkdir(parents=True)
    (labels_dir / "synset_words.txt").write_text(
        "".join(f"n0000000{i} class number {i}\n" for i in range(5)))

    images = root / "examples" / "images"
    images.mkdir(parents=True)
    Image.fromarray(smooth_image(rng, 50, 60)).save(images / "cat.jpg", quality=95)
    Image.fromarray(smooth_image(rng, 20, 24, 1)).save(images / "cat_gray.jpg", quality=95)
    surgery = root / "examples" / "net_surgery"
    surgery.mkdir()
    (surgery / "conv.prototxt").write_text(SURGERY_CONV)
    (surgery / "bvlc_caffenet_full_conv.prototxt").write_text(CAFFENET_FULL_CONV)
    return root, weights


# ------------------------------------------------------------------ (a) python/classify.py

def run_classify_py(workdir, args):
    source = CLASSIFY_PY
    assert source.count("\nimport caffe\n") == 1
    script = workdir / "classify.py"
    script.write_text(source.replace("\nimport caffe\n", "\nimport netspec as caffe\n"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script)] + [str(a) for a in args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_classify_py(caffe_root, tmp_path):
    root, weights = caffe_root
    rng = np.random.default_rng(1)
    model = root / "models" / "bvlc_reference_caffenet"
    common = ["--model_def", model / "deploy.prototxt",
              "--pretrained_model", model / "bvlc_reference_caffenet.caffemodel"]

    # one JPEG, the ten crops averaged; a mean of another size (resized by set_mean); input_scale
    cat = root / "examples" / "images" / "cat.jpg"
    mean40 = root / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy"
    out = run_classify_py(tmp_path, [cat, tmp_path / "out1.npy", *common, "--mean_file", mean40,
                                     "--images_dim", "40,44", "--input_scale", "0.5"])
    assert "Classifying 1 inputs." in out
    got = np.load(tmp_path / "out1.npy")
    mean = np_resized_mean(np.load(mean40), (32, 32))
    ref = np_classify([np_load_rgb(cat)], weights, (40, 44), 32, mean, True, input_scale=0.5)
    assert got.shape == (1, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)

    # a folder of PNGs (RGB, upscaled, and gray, tiled to RGB), centre crops only; a mean of
    # the input's size; another channel order and raw scale
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(smooth_image(rng, 30, 36)).save(folder / "a.png")
    Image.fromarray(smooth_image(rng, 44, 40, 1)).save(folder / "b.png")
    mean32 = rng.random((3, 32, 32)) * 0.2
    np.save(tmp_path / "mean32.npy", mean32)
    out = run_classify_py(tmp_path, [folder, tmp_path / "out2.npy", *common, "--mean_file", tmp_path / "mean32.npy",
                                     "--images_dim", "36,34", "--center_only", "--ext", "png",
                                     "--raw_scale", "1.0", "--channel_swap", "1,0,2"])
    assert "Classifying 2 inputs." in out
    files = glob.glob(str(folder) + "/*.png")        # classify.py's order
    ref = np_classify([np_load_rgb(f) for f in files], weights, (36, 34), 32, mean32, False,
                      raw_scale=1.0, channel_swap=(1, 0, 2))
    np.testing.assert_allclose(np.load(tmp_path / "out2.npy"), ref, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------ (b) 00-classification.ipynb

# The notebook's download-free code cells, in order, as Python 3 (print calls, items() for
# iteritems()); plotting and %timeit dropped; the 50 x 227 x 227 batch is 4 x 32 x 32 here.
CLASSIFICATION_CELLS = '''
import numpy as np
import sys
caffe_root = CAFFE_ROOT
sys.path.insert(0, caffe_root + 'python')

import caffe

import os
if os.path.isfile(caffe_root + 'models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel'):
    print('CaffeNet found.')

caffe.set_mode_cpu()

model_def = caffe_root + 'models/bvlc_reference_caffenet/deploy.prototxt'
model_weights = caffe_root + 'models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel'

net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

mu = np.load(caffe_root + 'python/caffe/imagenet/ilsvrc_2012_mean.npy')
mu = mu.mean(1).mean(1)  # average over pixels to obtain the mean (BGR) pixel values
print('mean-subtracted values:', list(zip('BGR', mu)))

transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})

transformer.set_transpose('data', (2,0,1))  # move image channels to outermost dimension
transformer.set_mean('data', mu)            # subtract the dataset-mean value in each channel
transformer.set_raw_scale('data', 255)      # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap('data', (2,1,0))  # swap channels from RGB to BGR

net.blobs['data'].reshape(4,         # batch size
                          3,         # 3-channel (BGR) images
                          32, 32)    # image size is 32x32

image = caffe.io.load_image(caffe_root + 'examples/images/cat.jpg')
transformed_image = transformer.preprocess('data', image)

net.blobs['data'].data[...] = transformed_image

output = net.forward()

output_prob = output['prob'][0]  # the output probability vector for the first image in the batch

print('predicted class is:', output_prob.argmax())

labels_file = caffe_root + 'data/ilsvrc12/synset_words.txt'
labels = np.loadtxt(labels_file, str, delimiter='\\t')

print('output label:', labels[output_prob.argmax()])

top_inds = output_prob.argsort()[::-1][:5]  # reverse sort and take five largest items

print('probabilities and labels:')
top5 = list(zip(output_prob[top_inds], labels[top_inds]))

caffe.set_device(0)  # if we have multiple GPUs, pick the first one
caffe.set_mode_gpu()
net.forward()  # run once before timing to set up memory

blob_shapes = []
for layer_name, blob in net.blobs.items():
    print(layer_name + '\\t' + str(blob.data.shape))
    blob_shapes.append((layer_name, blob.data.shape))

param_shapes = []
for layer_name, param in net.params.items():
    print(layer_name + '\\t' + str(param[0].data.shape), str(param[1].data.shape))
    param_shapes.append((layer_name, param[0].data.shape, param[1].data.shape))

filters = net.params['conv1'][0].data
vis_filters = filters.transpose(0, 2, 3, 1)

feat_conv1 = net.blobs['conv1'].data[0, :36]

feat_pool5 = net.blobs['pool5'].data[0]

feat = net.blobs['fc6'].data[0]
positive = feat.flat[feat.flat > 0]

feat_prob = net.blobs['prob'].data[0]

image = caffe.io.load_image('image.jpg')
net.blobs['data'].data[...] = transformer.preprocess('data', image)

net.forward()

output_prob2 = net.blobs['prob'].data[0]

top_inds2 = output_prob2.argsort()[::-1][:5]
'''


def test_00_classification_cells(caffe_root, tmp_path, monkeypatch):
    root, weights = caffe_root
    rng = np.random.default_rng(2)
    Image.fromarray(smooth_image(rng, 28, 36)).save(tmp_path / "image.jpg", quality=95)   # the "downloaded" one
    monkeypatch.chdir(tmp_path)
    source = CLASSIFICATION_CELLS
    assert source.count("\nimport caffe\n") == 1
    ns = {"CAFFE_ROOT": str(root) + "/"}
    device = jax.config.jax_default_device
    try:
        ported = source.replace("\nimport caffe\n", "\nimport netspec as caffe\n")
        exec(compile(ported, "00-classification", "exec"), ns)
    finally:
        jax.config.update("jax_default_device", device)    # the cells chose a device for the process

    mu = np.load(root / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy").mean(axis=(1, 2))
    np.testing.assert_allclose(ns["mu"], mu)
    image = np_load_rgb(root / "examples" / "images" / "cat.jpg")
    np.testing.assert_array_equal(ns["image"], np_load_rgb(tmp_path / "image.jpg"))   # the last cell's
    x = np_preprocess(np_resize_image(image, (32, 32)), mu[:, None, None])
    assert ns["transformed_image"].shape == (3, 32, 32) and ns["transformed_image"].dtype == np.float32
    np.testing.assert_allclose(ns["transformed_image"], x, rtol=1e-5, atol=2e-3)

    ref = np_caffenet(np.repeat(x[None], 4, axis=0), weights)
    top = ref["prob"][0].argmax()
    assert 0.05 < ref["prob"][0].min() and ref["prob"][0].max() < 0.95
    assert list(ns["top_inds"]) == list(np.argsort(ref["prob"][0])[::-1][:5])
    np.testing.assert_allclose([p for p, _ in ns["top5"]], np.sort(ref["prob"][0])[::-1], rtol=1e-4, atol=2e-5)
    assert ns["top5"][0][1] == f"n0000000{top} class number {top}"

    assert ns["blob_shapes"] == [("data", (4, 3, 32, 32)), ("conv1", (4, 6, 32, 32)), ("pool5", (4, 6, 16, 16)),
                                 ("fc6", (4, 12)), ("fc7", (4, 10)), ("fc8", (4, 5)), ("prob", (4, 5))]
    assert ns["param_shapes"] == [("conv1", (6, 3, 3, 3), (6,)), ("fc6", (12, 1536), (12,)),
                                  ("fc7", (10, 12), (10,)), ("fc8", (5, 10), (5,))]
    np.testing.assert_array_equal(ns["filters"], weights["conv1"][0])
    assert ns["vis_filters"].shape == (6, 3, 3, 3)

    # the last cell: another image through the same transformer
    x2 = np_preprocess(np_resize_image(np_load_rgb(tmp_path / "image.jpg"), (32, 32)), mu[:, None, None])
    ref2 = np_caffenet(np.repeat(x2[None], 4, axis=0), weights)
    np.testing.assert_allclose(ns["output_prob2"], ref2["prob"][0], rtol=1e-4, atol=2e-5)
    assert list(ns["top_inds2"]) == list(np.argsort(ref2["prob"][0])[::-1][:5])
    # the arrays read before that pass (output, output_prob, the feat_* blobs) are views of
    # the blobs, as in pycaffe, so they now show its values
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ns["output"]["prob"], ref2["prob"], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(ns["output_prob"], ref2["prob"][0], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(ns["feat_prob"], ref2["prob"][0], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(ns["feat_conv1"], ref2["conv1"][0, :36], **tol)
    np.testing.assert_allclose(ns["feat_pool5"], ref2["pool5"][0], **tol)
    np.testing.assert_allclose(ns["feat"], ref2["fc6"][0], **tol)
    np.testing.assert_allclose(ns["positive"], ref["fc6"][0][ref["fc6"][0] > 0], **tol)   # a copy: first pass
    assert not np.allclose(ref2["prob"][0], ref["prob"][0], atol=1e-3)


# ------------------------------------------------------------------ (c) net_surgery.ipynb

# The notebook's code cells run from examples/, as Python 3; plotting dropped, the !diff cell
# left out, the ImageNet class 281 is class 3 of the 5 here.
NET_SURGERY_CELLS = '''
import numpy as np

caffe_root = '../'  # this file is expected to be in {caffe_root}/examples
import sys
sys.path.insert(0, caffe_root + 'python')

import caffe

caffe.set_mode_cpu()
net = caffe.Net('net_surgery/conv.prototxt', caffe.TEST)
print("blobs {}\\nparams {}".format(net.blobs.keys(), net.params.keys()))

im = np.array(caffe.io.load_image('images/cat_gray.jpg', color=False)).squeeze()

im_input = im[np.newaxis, np.newaxis, :, :]
net.blobs['data'].reshape(*im_input.shape)
net.blobs['data'].data[...] = im_input

def show_filters(net):
    net.forward()
    filt_min, filt_max = net.blobs['conv'].data.min(), net.blobs['conv'].data.max()
    return filt_min, filt_max

initial_range = show_filters(net)
initial_conv = net.blobs['conv'].data.copy()
initial_weights = net.params['conv'][0].data.copy()

conv0 = net.blobs['conv'].data[0, 0]
print("pre-surgery output mean {:.2f}".format(conv0.mean()))
pre_mean = conv0.mean()
net.params['conv'][1].data[0] = 1.
net.forward()
print("post-surgery output mean {:.2f}".format(conv0.mean()))
post_mean = conv0.mean()

ksize = net.params['conv'][0].data.shape[2:]
sigma = 1.
y, x = np.mgrid[-ksize[0]//2 + 1:ksize[0]//2 + 1, -ksize[1]//2 + 1:ksize[1]//2 + 1]
g = np.exp(-((x**2 + y**2)/(2.0*sigma**2)))
gaussian = (g / g.sum()).astype(np.float32)
net.params['conv'][0].data[0] = gaussian
net.params['conv'][0].data[1:] = 0.
sobel = np.array((-1, -2, -1, 0, 0, 0, 1, 2, 1), dtype=np.float32).reshape((3,3))
net.params['conv'][0].data[1, 0, 1:-1, 1:-1] = sobel  # horizontal
net.params['conv'][0].data[2, 0, 1:-1, 1:-1] = sobel.T  # vertical
filtered_range = show_filters(net)
filtered = net.blobs['conv'].data.copy()

net = caffe.Net('../models/bvlc_reference_caffenet/deploy.prototxt',
                '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                caffe.TEST)
params = ['fc6', 'fc7', 'fc8']
fc_params = {pr: (net.params[pr][0].data, net.params[pr][1].data) for pr in params}

for fc in params:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(fc, fc_params[fc][0].shape, fc_params[fc][1].shape))

net_full_conv = caffe.Net('net_surgery/bvlc_caffenet_full_conv.prototxt',
                          '../models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel',
                          caffe.TEST)
params_full_conv = ['fc6-conv', 'fc7-conv', 'fc8-conv']
conv_params = {pr: (net_full_conv.params[pr][0].data, net_full_conv.params[pr][1].data) for pr in params_full_conv}

for conv in params_full_conv:
    print('{} weights are {} dimensional and biases are {} dimensional'.format(conv, conv_params[conv][0].shape, conv_params[conv][1].shape))

for pr, pr_conv in zip(params, params_full_conv):
    conv_params[pr_conv][0].flat = fc_params[pr][0].flat  # flat unrolls the arrays
    conv_params[pr_conv][1][...] = fc_params[pr][1]

net_full_conv.save('net_surgery/bvlc_caffenet_full_conv.caffemodel')

im = caffe.io.load_image('images/cat.jpg')
transformer = caffe.io.Transformer({'data': net_full_conv.blobs['data'].data.shape})
transformer.set_mean('data', np.load('../python/caffe/imagenet/ilsvrc_2012_mean.npy').mean(1).mean(1))
transformer.set_transpose('data', (2,0,1))
transformer.set_channel_swap('data', (2,1,0))
transformer.set_raw_scale('data', 255.0)
out = net_full_conv.forward_all(data=np.asarray([transformer.preprocess('data', im)]))
print(out['prob'][0].argmax(axis=0))
deprocessed = transformer.deprocess('data', net_full_conv.blobs['data'].data[0])
confidence = out['prob'][0,3]
'''


def test_net_surgery_cells(caffe_root, monkeypatch):
    root, weights = caffe_root
    monkeypatch.chdir(root / "examples")
    source = NET_SURGERY_CELLS
    assert source.count("\nimport caffe\n") == 1
    ns = {}
    exec(compile(source.replace("\nimport caffe\n", "\nimport netspec as caffe\n"), "net_surgery", "exec"), ns)

    gray = np.asarray(Image.open(root / "examples" / "images" / "cat_gray.jpg"), np.float64) / 255.0
    np.testing.assert_allclose(ns["im_input"][0, 0], gray, rtol=1e-6)
    w0 = ns["initial_weights"].astype(np.float64)
    assert w0.shape == (3, 1, 5, 5) and 0.003 < w0.std() < 0.03            # the gaussian filler, std 0.01
    ref = np_conv(gray[None, None], w0, np.zeros(3))
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ns["initial_conv"], ref, **tol)
    assert ns["initial_conv"].shape == (1, 3, 16, 20)
    np.testing.assert_allclose(ns["initial_range"], (ref.min(), ref.max()), **tol)
    # conv0 is a view: the bias surgery shows in it after the next forward
    np.testing.assert_allclose(ns["pre_mean"], ref[0, 0].mean(), **tol)
    np.testing.assert_allclose(ns["post_mean"], ref[0, 0].mean() + 1, **tol)

    g = ns["gaussian"].astype(np.float64)
    sobel = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float64)
    w = np.zeros((3, 1, 5, 5))
    w[0, 0], w[1, 0, 1:-1, 1:-1], w[2, 0, 1:-1, 1:-1] = g, sobel, sobel.T
    np.testing.assert_allclose(ns["net"].params["fc6"][0].data, weights["fc6"][0])   # (the caffenet by now)
    np.testing.assert_allclose(ns["filtered"], np_conv(gray[None, None], w, np.array([1.0, 0, 0])), **tol)

    # fc -> conv: the same weights, reshaped; the saved file holds them
    conv_params = ns["conv_params"]
    assert [conv_params[k][0].shape for k in ns["params_full_conv"]] == [(12, 6, 16, 16), (10, 12, 1, 1), (5, 10, 1, 1)]
    for fc, conv in zip(ns["params"], ns["params_full_conv"]):
        np.testing.assert_array_equal(conv_params[conv][0].reshape(weights[fc][0].shape), weights[fc][0])
        np.testing.assert_array_equal(conv_params[conv][1], weights[fc][1])
    saved = caffe.Net(str(root / "examples" / "net_surgery" / "bvlc_caffenet_full_conv.prototxt"),
                      str(root / "examples" / "net_surgery" / "bvlc_caffenet_full_conv.caffemodel"), caffe.TEST)
    for fc, conv in zip(ns["params"], ns["params_full_conv"]):
        np.testing.assert_array_equal(saved.params[conv][0].data.reshape(weights[fc][0].shape), weights[fc][0])
    np.testing.assert_array_equal(saved.params["conv1"][0].data, weights["conv1"][0])

    # the classification map: the fc net applied at every 16 x 16 window of pool5, stride 1
    mu = np.load(root / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy").mean(axis=(1, 2))
    image = np_load_rgb(root / "examples" / "images" / "cat.jpg")
    x = np_preprocess(np_resize_image(image, (40, 48)), mu[:, None, None])[None]
    w64 = {k: [a.astype(np.float64) for a in v] for k, v in weights.items()}
    pool5 = np_max_pool_2x2(np.maximum(np_conv(x, *w64["conv1"], pad=1), 0))
    prob = np.zeros((5, 5, 9))
    for i in range(5):
        for j in range(9):
            window = pool5[:, :, i:i + 16, j:j + 16].reshape(1, -1)
            fc6 = np.maximum(window @ w64["fc6"][0].T + w64["fc6"][1], 0)
            fc7 = np.maximum(fc6 @ w64["fc7"][0].T + w64["fc7"][1], 0)
            prob[:, i, j] = np_softmax(fc7 @ w64["fc8"][0].T + w64["fc8"][1])[0]
    assert ns["out"]["prob"].shape == (1, 5, 5, 9)
    np.testing.assert_allclose(ns["out"]["prob"][0], prob, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(ns["out"]["prob"][0].argmax(axis=0), prob.argmax(axis=0))
    np.testing.assert_allclose(ns["confidence"], prob[3], rtol=1e-4, atol=2e-5)
    # deprocess undoes preprocess: the resized image back
    assert ns["deprocessed"].shape == (40, 48, 3)
    np.testing.assert_allclose(ns["deprocessed"], np_resize_image(image, (40, 48)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ Detector

def np_context_crop(im, window, crop_size, context_pad, crop_mean):
    """R-CNN's context crop (pycaffe's Detector.crop), in NumPy: the window grown so that
    context_pad pixels of the crop_size input are context, out-of-image parts = mean."""
    scale = crop_size / (crop_size - 2.0 * context_pad)
    y0, x0, y1, x1 = [float(v) for v in window]
    hh, hw = (y1 - y0 + 1) / 2.0, (x1 - x0 + 1) / 2.0
    cy, cx = y0 + hh, x0 + hw
    box = np.round([cy - scale * hh, cx - scale * hw, cy + scale * hh, cx + scale * hw])
    sh, sw = crop_size / (box[2] - box[0] + 1), crop_size / (box[3] - box[1] + 1)
    pad_y, pad_x = round(max(0.0, -box[0]) * sh), round(max(0.0, -box[1]) * sw)
    h, w = im.shape[:2]
    box = np.clip(box, 0, [h, w, h, w])
    ch = min(round((box[2] - box[0] + 1) * sh), crop_size - pad_y)
    cw = min(round((box[3] - box[1] + 1) * sw), crop_size - pad_x)
    out = np.empty((crop_size, crop_size, 3))
    out[...] = crop_mean
    inside = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
    out[pad_y:pad_y + ch, pad_x:pad_x + cw] = np_resize_image(inside, (ch, cw))
    return out


def test_detector(caffe_root):
    root, weights = caffe_root
    model = root / "models" / "bvlc_reference_caffenet"
    mu = np.load(root / "python" / "caffe" / "imagenet" / "ilsvrc_2012_mean.npy").mean(axis=(1, 2))
    cat = str(root / "examples" / "images" / "cat.jpg")
    image = np_load_rgb(cat)
    windows = np.array([[5, 6, 30, 40], [0, 0, 50, 60], [20, 30, 45, 58]])

    plain = caffe.Detector(str(model / "deploy.prototxt"), str(model / "bvlc_reference_caffenet.caffemodel"),
                           mean=mu, raw_scale=255, channel_swap=(2, 1, 0))
    assert list(plain.crop_dims) == [32, 32, 3]
    dets = plain.detect_windows([(cat, windows)])
    x = np.stack([np_preprocess(np_resize_image(image[y0:y1, x0:x1], (32, 32)), mu[:, None, None])
                  for y0, x0, y1, x1 in windows])
    ref = np_caffenet(x, weights)["prob"]
    assert [d["filename"] for d in dets] == [cat] * 3
    for d, win, r in zip(dets, windows, ref):
        np.testing.assert_array_equal(d["window"], win)
        np.testing.assert_allclose(d["prediction"], r, rtol=1e-4, atol=2e-5)

    padded = caffe.Detector(str(model / "deploy.prototxt"), str(model / "bvlc_reference_caffenet.caffemodel"),
                            mean=mu, raw_scale=255, channel_swap=(2, 1, 0), context_pad=4)
    np.testing.assert_allclose(padded.crop_mean.reshape(3), mu[::-1] / 255)   # image space: RGB, [0, 1]
    dets = padded.detect_windows(zip([cat], [windows]))                    # any iterable, as detect.py's
    crops = [np_context_crop(image, win, 32, 4, mu[::-1] / 255) for win in windows]
    for crop, win in zip(crops, windows):
        np.testing.assert_allclose(padded.crop(image, win), crop, rtol=1e-5, atol=1e-5)
    ref = np_caffenet(np.stack([np_preprocess(c, mu[:, None, None]) for c in crops]), weights)["prob"]
    assert len(dets) == 3
    for d, r in zip(dets, ref):
        np.testing.assert_allclose(d["prediction"], r, rtol=1e-4, atol=2e-5)

    with pytest.raises(caffe.NetspecError, match="selective search is not included"):
        padded.detect_selective_search([cat])

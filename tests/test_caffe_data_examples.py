"""Whole BVLC examples trained from databases made by ``netspec convert-imageset``:
LeNet (examples/mnist) and CIFAR-10 quick (examples/cifar10, with the mean from
``netspec compute-image-mean``), adapted only in paths, batch sizes and iteration
counts; plus ``netspec train`` on a net whose database is missing (exit 2, one line).

The prototxts below are BVLC Caffe's (BSD-2-Clause), comment lines removed."""
import os
import re

import numpy as np

from netspec import cli
from netspec.caffemodel import load_weights, read_solverstate

from caffe_data_helpers import write_images, write_list

LENET_NET = """\
name: "LeNet"
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    scale: 0.00390625
  }
  data_param {
    source: "examples/mnist/mnist_train_lmdb"
    batch_size: 64
    backend: LMDB
  }
}
layer {
  name: "mnist"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TEST
  }
  transform_param {
    scale: 0.00390625
  }
  data_param {
    source: "examples/mnist/mnist_test_lmdb"
    batch_size: 100
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 20
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 50
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: MAX
    kernel_size: 2
    stride: 2
  }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool2"
  top: "ip1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  inner_product_param {
    num_output: 500
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "ip1"
  top: "ip1"
}
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include {
    phase: TEST
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
}
"""

LENET_SOLVER = """\
net: "examples/mnist/lenet_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "examples/mnist/lenet"
solver_mode: GPU
"""

CIFAR_NET = """\
name: "CIFAR10_quick"
layer {
  name: "cifar"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TRAIN
  }
  transform_param {
    mean_file: "examples/cifar10/mean.binaryproto"
  }
  data_param {
    source: "examples/cifar10/cifar10_train_lmdb"
    batch_size: 100
    backend: LMDB
  }
}
layer {
  name: "cifar"
  type: "Data"
  top: "data"
  top: "label"
  include {
    phase: TEST
  }
  transform_param {
    mean_file: "examples/cifar10/mean.binaryproto"
  }
  data_param {
    source: "examples/cifar10/cifar10_test_lmdb"
    batch_size: 100
    backend: LMDB
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 32
    pad: 2
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "gaussian"
      std: 0.0001
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param {
    pool: MAX
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "relu1"
  type: "ReLU"
  bottom: "pool1"
  top: "pool1"
}
layer {
  name: "conv2"
  type: "Convolution"
  bottom: "pool1"
  top: "conv2"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 32
    pad: 2
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "gaussian"
      std: 0.01
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "relu2"
  type: "ReLU"
  bottom: "conv2"
  top: "conv2"
}
layer {
  name: "pool2"
  type: "Pooling"
  bottom: "conv2"
  top: "pool2"
  pooling_param {
    pool: AVE
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "conv3"
  type: "Convolution"
  bottom: "pool2"
  top: "conv3"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  convolution_param {
    num_output: 64
    pad: 2
    kernel_size: 5
    stride: 1
    weight_filler {
      type: "gaussian"
      std: 0.01
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "relu3"
  type: "ReLU"
  bottom: "conv3"
  top: "conv3"
}
layer {
  name: "pool3"
  type: "Pooling"
  bottom: "conv3"
  top: "pool3"
  pooling_param {
    pool: AVE
    kernel_size: 3
    stride: 2
  }
}
layer {
  name: "ip1"
  type: "InnerProduct"
  bottom: "pool3"
  top: "ip1"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  inner_product_param {
    num_output: 64
    weight_filler {
      type: "gaussian"
      std: 0.1
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "ip2"
  type: "InnerProduct"
  bottom: "ip1"
  top: "ip2"
  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
  inner_product_param {
    num_output: 10
    weight_filler {
      type: "gaussian"
      std: 0.1
    }
    bias_filler {
      type: "constant"
    }
  }
}
layer {
  name: "accuracy"
  type: "Accuracy"
  bottom: "ip2"
  bottom: "label"
  top: "accuracy"
  include {
    phase: TEST
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "ip2"
  bottom: "label"
  top: "loss"
}
"""

CIFAR_SOLVER = """\
net: "examples/cifar10/cifar10_quick_train_test.prototxt"
test_iter: 100
test_interval: 500
base_lr: 0.001
momentum: 0.9
weight_decay: 0.004
lr_policy: "fixed"
display: 100
max_iter: 4000
snapshot: 4000
snapshot_prefix: "examples/cifar10/cifar10_quick"
solver_mode: GPU
"""


def adapt(text, replacements):
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def losses(log):
    return [float(v) for v in re.findall(r"Iteration \d+.*?, loss = ([-\d.e+]+)", log)]


def make_db(tmp_path, name, count, size, color, seed):
    root = tmp_path / f"{name}_images"
    entries = write_images(str(root), count, size=size, color=color, seed=seed)
    listing = write_list(str(tmp_path / f"{name}.txt"), entries)
    flags = [] if color else ["--gray"]
    assert cli.main(["convert-imageset", *flags, "--shuffle", str(root) + "/", listing,
                     str(tmp_path / name)]) == 0
    return str(tmp_path / name)


def train(tmp_path, solver_text, capfd):
    (tmp_path / "solver.prototxt").write_text(solver_text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = cli.main(["train", "--solver", "solver.prototxt"])
    finally:
        os.chdir(cwd)
    out, err = capfd.readouterr()
    assert rc == 0, err[-3000:]
    return out + err


def test_lenet_trains_from_convert_imageset_lmdb(tmp_path, capfd):
    make_db(tmp_path, "mnist_train_lmdb", 64, (28, 28), False, seed=1)
    make_db(tmp_path, "mnist_test_lmdb", 32, (28, 28), False, seed=2)
    capfd.readouterr()
    (tmp_path / "lenet_train_test.prototxt").write_text(adapt(LENET_NET, {
        "examples/mnist/mnist_train_lmdb": "mnist_train_lmdb", "examples/mnist/mnist_test_lmdb": "mnist_test_lmdb",
        "batch_size: 64": "batch_size: 16", "batch_size: 100": "batch_size: 16"}))
    log = train(tmp_path, adapt(LENET_SOLVER, {
        "examples/mnist/lenet_train_test.prototxt": "lenet_train_test.prototxt",
        "test_iter: 100": "test_iter: 2", "test_interval: 500": "test_interval: 20",
        "display: 100": "display: 1", "max_iter: 10000": "max_iter: 20", "snapshot: 5000": "snapshot: 20",
        "examples/mnist/lenet": "snap/lenet", "solver_mode: GPU": "solver_mode: CPU"}), capfd)
    values = losses(log)
    assert len(values) >= 10, log[-2000:]
    assert np.mean(values[-4:]) < np.mean(values[:4]), values
    assert "Test net output" in log
    weights = load_weights(str(tmp_path / "snap/lenet_iter_20.caffemodel"))
    assert weights["conv1"][0].shape == (20, 1, 5, 5)
    assert read_solverstate(str(tmp_path / "snap/lenet_iter_20.solverstate")).iter == 20


def test_cifar10_quick_trains_with_compute_image_mean(tmp_path, capfd):
    make_db(tmp_path, "cifar10_train_lmdb", 64, (32, 32), True, seed=3)
    make_db(tmp_path, "cifar10_test_lmdb", 32, (32, 32), True, seed=4)
    assert cli.main(["compute-image-mean", str(tmp_path / "cifar10_train_lmdb"),
                     str(tmp_path / "mean.binaryproto")]) == 0
    capfd.readouterr()
    (tmp_path / "cifar10_quick_train_test.prototxt").write_text(adapt(CIFAR_NET, {
        "examples/cifar10/mean.binaryproto": "mean.binaryproto",
        "examples/cifar10/cifar10_train_lmdb": "cifar10_train_lmdb",
        "examples/cifar10/cifar10_test_lmdb": "cifar10_test_lmdb",
        "batch_size: 100": "batch_size: 16"}))
    log = train(tmp_path, adapt(CIFAR_SOLVER, {
        "examples/cifar10/cifar10_quick_train_test.prototxt": "cifar10_quick_train_test.prototxt",
        "test_iter: 100": "test_iter: 2", "test_interval: 500": "test_interval: 30",
        "display: 100": "display: 1", "max_iter: 4000": "max_iter: 30", "snapshot: 4000": "snapshot: 30",
        "examples/cifar10/cifar10_quick": "snap/cifar10_quick", "solver_mode: GPU": "solver_mode: CPU"}), capfd)
    values = losses(log)
    assert len(values) >= 20, log[-2000:]
    assert np.mean(values[-5:]) < np.mean(values[:5]), values
    assert os.path.exists(tmp_path / "snap/cifar10_quick_iter_30.caffemodel")


def test_train_on_missing_database_exits_2_with_one_line(tmp_path, capfd):
    (tmp_path / "net.prototxt").write_text(adapt(LENET_NET, {
        "examples/mnist/mnist_train_lmdb": str(tmp_path / "nowhere_lmdb"),
        "examples/mnist/mnist_test_lmdb": str(tmp_path / "nowhere_lmdb")}))
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/net.prototxt"\nbase_lr: 0.01\n'
                                              'lr_policy: "fixed"\nmax_iter: 2\n')
    rc = cli.main(["train", "--solver", str(tmp_path / "solver.prototxt")])
    out, err = capfd.readouterr()
    assert rc == 2
    assert "Traceback" not in err
    line = [l for l in err.splitlines() if "error:" in l]
    assert len(line) == 1 and "nowhere_lmdb" in line[0] and "does not exist" in line[0], err


def test_train_on_corrupt_datum_exits_2(tmp_path, capfd):
    from caffe_data_helpers import write_lmdb
    write_lmdb(tmp_path / "bad_lmdb", [("00000000_a", b"\xff\xff\xff garbage")])
    (tmp_path / "net.prototxt").write_text(adapt(LENET_NET, {
        "examples/mnist/mnist_train_lmdb": str(tmp_path / "bad_lmdb"),
        "examples/mnist/mnist_test_lmdb": str(tmp_path / "bad_lmdb")}))
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path}/net.prototxt"\nbase_lr: 0.01\n'
                                              'lr_policy: "fixed"\nmax_iter: 2\n')
    rc = cli.main(["train", "--solver", str(tmp_path / "solver.prototxt")])
    out, err = capfd.readouterr()
    assert rc == 2 and "Traceback" not in err
    assert 'key "00000000_a"' in err and "not a caffe.Datum" in err, err

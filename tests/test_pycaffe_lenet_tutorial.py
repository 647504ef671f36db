"""The code cells of pycaffe's "Learning LeNet" tutorial (examples/01-learning-lenet.ipynb),
run with ``import netspec as caffe`` on a small generated MNIST-layout LMDB, checked
against NumPy: the data the Data layer gives, the train loss read from
``solver.net.blobs['loss']`` after every ``solver.step(1)``, the test net's scores after
``forward(start='conv1')`` and the test accuracy loop."""
import lmdb
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import netspec as caffe
from netspec import layers as L, params as P
from netspec.proto import caffe_pb2


def _digits(n, seed):
    """28x28 gray uint8 images whose class (0-9) is a bright bar at one of ten places."""
    rs = np.random.RandomState(seed)
    labels = rs.randint(0, 10, n)
    images = rs.randint(0, 60, (n, 28, 28)).astype(np.uint8)
    for img, y in zip(images, labels):
        r, c = divmod(int(y), 5)
        img[4 + 10 * r:10 + 10 * r, 2 + 5 * c:6 + 5 * c] = 230
    return images, labels


def _write_lmdb(path, images, labels):
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (img, y) in enumerate(zip(images, labels)):
            datum = caffe_pb2.Datum(channels=1, height=28, width=28, data=img.tobytes(), label=int(y))
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


def lenet(lmdb_path, batch_size):
    # the tutorial's net, unchanged
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb_path,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def _numpy_lenet(x, params):
    """LeNet's forward in NumPy (float64): valid 5x5 convolutions, 2x2 max pooling."""
    def conv(x, w, b):
        windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))     # N, C, H', W', kh, kw
        return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]

    def pool(x):
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    p = {k: [np.asarray(b.data, np.float64) for b in v] for k, v in params.items()}
    h = pool(conv(x.astype(np.float64), *p["conv1"]))
    h = pool(conv(h, *p["conv2"]))
    h = np.maximum(h.reshape(len(x), -1) @ p["fc1"][0].T + p["fc1"][1], 0)
    return h @ p["score"][0].T + p["score"][1]


def _softmax_loss(scores, labels):
    z = scores - scores.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -np.mean(logp[np.arange(len(labels)), labels.astype(int)])


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    root = tmp_path_factory.mktemp("lenet")
    train_images, train_labels = _digits(96, 0)
    test_images, test_labels = _digits(40, 1)
    _write_lmdb(root / "mnist_train_lmdb", train_images, train_labels)
    _write_lmdb(root / "mnist_test_lmdb", test_images, test_labels)
    with open(root / "lenet_auto_train.prototxt", "w") as f:
        f.write(str(lenet(str(root / "mnist_train_lmdb"), 16)))
    with open(root / "lenet_auto_test.prototxt", "w") as f:
        f.write(str(lenet(str(root / "mnist_test_lmdb"), 20)))
    # the solver as the tutorial's custom-net cell builds it
    s = caffe_pb2.SolverParameter()
    s.random_seed = 0xCAFFE
    s.train_net = str(root / "lenet_auto_train.prototxt")
    s.test_net.append(str(root / "lenet_auto_test.prototxt"))
    s.test_interval = 500
    s.test_iter.append(2)
    s.max_iter = 10000
    s.type = "SGD"
    s.base_lr = 0.01
    s.momentum = 0.9
    s.weight_decay = 5e-4
    s.lr_policy = 'inv'
    s.gamma = 0.0001
    s.power = 0.75
    s.display = 1000
    s.snapshot = 5000
    s.snapshot_prefix = str(root / "lenet")
    with open(root / "lenet_auto_solver.prototxt", "w") as f:
        f.write(str(s))
    return root, (train_images, train_labels), (test_images, test_labels)


def test_learning_lenet_cells(tutorial):
    root, (train_images, train_labels), (test_images, test_labels) = tutorial
    solver = caffe.SGDSolver(str(root / "lenet_auto_solver.prototxt"))

    assert [(k, v.data.shape) for k, v in solver.net.blobs.items()] == [
        ("data", (16, 1, 28, 28)), ("label", (16,)), ("conv1", (16, 20, 24, 24)), ("pool1", (16, 20, 12, 12)),
        ("conv2", (16, 50, 8, 8)), ("pool2", (16, 50, 4, 4)), ("fc1", (16, 500)), ("score", (16, 10)),
        ("loss", ())]
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()] == [
        ("conv1", (20, 1, 5, 5)), ("conv2", (50, 20, 5, 5)), ("fc1", (500, 800)), ("score", (10, 500))]

    solver.net.forward()           # train net
    solver.test_nets[0].forward()  # test net
    # the Data layer reads the records in order, scaled by 1/255
    np.testing.assert_allclose(solver.net.blobs['data'].data[:, 0], train_images[:16] / np.float32(255), rtol=1e-6)
    np.testing.assert_array_equal(solver.net.blobs['label'].data, train_labels[:16])
    np.testing.assert_array_equal(solver.test_nets[0].blobs['label'].data, test_labels[:20])

    solver.step(1)
    # after a step, conv1's diff is the update SGD just applied (lr * gradient at the first step)
    assert np.abs(solver.net.params['conv1'][0].diff).sum() > 0

    niter, test_interval = 30, 10
    train_loss = np.zeros(niter)
    test_acc = np.zeros(int(np.ceil(niter / test_interval)))
    output = np.zeros((niter, 8, 10))
    for it in range(niter):
        solver.step(1)
        train_loss[it] = solver.net.blobs['loss'].data
        # the loss read back is the softmax loss of the pass just run (NumPy, from its blobs)
        np.testing.assert_allclose(train_loss[it], _softmax_loss(solver.net.blobs['score'].data,
                                                                 solver.net.blobs['label'].data), rtol=1e-4)
        solver.test_nets[0].forward(start='conv1')
        output[it] = solver.test_nets[0].blobs['score'].data[:8]
        if it % test_interval == 0:
            # forward(start='conv1') ran on the data already in the blob: NumPy LeNet with the current weights
            test_net = solver.test_nets[0]
            np.testing.assert_allclose(test_net.blobs['score'].data,
                                       _numpy_lenet(test_net.blobs['data'].data, test_net.params),
                                       rtol=1e-3, atol=1e-4)
            correct = 0
            for test_it in range(2):
                solver.test_nets[0].forward()
                correct += sum(solver.test_nets[0].blobs['score'].data.argmax(1)
                               == solver.test_nets[0].blobs['label'].data)
            test_acc[it // test_interval] = correct / 40.
    assert train_loss[-5:].mean() < train_loss[:5].mean()
    assert test_acc[-1] >= 0.5

"""FCN-8s (VOC, 21 classes) in PyTorch eager: the peer for bench_fcn8s.py.

Same topology as models/voc-fcn8s/deploy.prototxt: VGG16 trunk with pad 100 on
conv1_1, ceil-mode 2x2 max pooling, fc6/fc7 as convolutions, fixed Deconvolution
upsampling (no bias), Caffe's crops (offsets 5, 9, 31).  Weights come from a netspec
param tree ``{layer: [weight, bias]}`` in Caffe shapes, which are also PyTorch's
(conv: (O, C, kh, kw); deconv: (C_in, O, kh, kw)).
"""
import numpy as np
import torch
import torch.nn.functional as F

TRUNK = [  # (layer, padding), each followed by ReLU; "pool" is a 2x2 ceil-mode max pool
    ("conv1_1", 100), ("conv1_2", 1), "pool",
    ("conv2_1", 1), ("conv2_2", 1), "pool",
    ("conv3_1", 1), ("conv3_2", 1), ("conv3_3", 1), "pool3",
    ("conv4_1", 1), ("conv4_2", 1), ("conv4_3", 1), "pool4",
    ("conv5_1", 1), ("conv5_2", 1), ("conv5_3", 1), "pool",
]
FIXED = ("upscore2", "upscore_pool4", "upscore8")  # lr_mult 0 upsampling


def params_from_tree(tree, dtype=torch.float32):
    """Torch tensors from a netspec param tree; learned ones require grad."""
    params = {}
    for layer, blobs in tree.items():
        tensors = [torch.tensor(np.asarray(b, np.float32), dtype=dtype) for b in blobs]
        for t in tensors:
            t.requires_grad_(layer not in FIXED)
        params[layer] = tensors
    return params


def _conv(p, name, x, padding=0):
    weight, bias = p[name]
    return F.conv2d(x, weight, bias, padding=padding)


def _crop(x, like, offset):
    h, w = like.shape[2:]
    return x[:, :, offset:offset + h, offset:offset + w]


def forward(p, data, train=False):
    """The ``score`` blob (N, 21, H, W) for ``data`` (N, 3, H, W)."""
    x = data
    skips = {}
    for step in TRUNK:
        if isinstance(step, tuple):
            x = F.relu(_conv(p, step[0], x, step[1]))
        else:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            skips[step] = x
    x = F.dropout(F.relu(_conv(p, "fc6", x)), 0.5, train)
    x = F.dropout(F.relu(_conv(p, "fc7", x)), 0.5, train)
    score_fr = _conv(p, "score_fr", x)
    upscore2 = F.conv_transpose2d(score_fr, p["upscore2"][0], stride=2)
    score_pool4c = _crop(_conv(p, "score_pool4", skips["pool4"]), upscore2, 5)
    upscore_pool4 = F.conv_transpose2d(upscore2 + score_pool4c, p["upscore_pool4"][0], stride=2)
    score_pool3c = _crop(_conv(p, "score_pool3", skips["pool3"]), upscore_pool4, 9)
    upscore8 = F.conv_transpose2d(upscore_pool4 + score_pool3c, p["upscore8"][0], stride=8)
    return _crop(upscore8, data, 31)


def loss(p, data, label):
    """SoftmaxWithLoss with ignore_label 255 and normalize: false (sum over pixels / N)."""
    score = forward(p, data, train=True)
    total = F.cross_entropy(score.float(), label.long(), ignore_index=255, reduction="sum")
    return total / data.shape[0]

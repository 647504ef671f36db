"""FCN-8s on PASCAL VOC: FCN-16s plus a pool3 skip; upsampled by 2, 2 and 8.

Run ``python net.py`` (from any directory) to rewrite
train.prototxt, val.prototxt and deploy.prototxt next to this file.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
try:
    import netspec.net_spec  # noqa: F401
except ImportError:  # running from a source checkout: its root is two levels up
    sys.path.insert(0, os.path.dirname(MODELS))
if MODELS not in sys.path:  # for fcn_layers, the helpers the models share
    sys.path.insert(0, MODELS)
from fcn_layers import (  # noqa: E402
    fuse_skip, score, softmax_loss, upsample, vgg16_fc7, voc_data, write_splits)
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L  # noqa: E402

def fcn(split):
    """The train / seg11valid net, or with split 'deploy' the inference net (Input, no loss)."""
    n = NetSpec()
    if split == 'deploy':
        # the input size is an example: the net is reshaped to each image.
        # As in the reference deploy net: the layer is named 'input' (its top is
        # 'data') and there are no Dropout layers (identities at inference anyway).
        n.data = L.Input(name='input', shape=dict(dim=[1, 3, 500, 500]))
    else:
        voc_data(n, split)
    n.score_fr = score(vgg16_fc7(n, n.data, dropout=split != 'deploy'), 21)
    n.upscore2 = upsample(n.score_fr, 21, ks=4, stride=2)

    n.score_pool4 = score(n.pool4, 21)
    n.score_pool4c, n.fuse_pool4 = fuse_skip(n.upscore2, n.score_pool4)
    n.upscore_pool4 = upsample(n.fuse_pool4, 21, ks=4, stride=2)

    n.score_pool3 = score(n.pool3, 21)
    n.score_pool3c, n.fuse_pool3 = fuse_skip(n.upscore_pool4, n.score_pool3)
    n.upscore8 = upsample(n.fuse_pool3, 21, ks=16, stride=8)
    n.score = crop(n.upscore8, n.data)
    if split != 'deploy':
        n.loss = softmax_loss(n.score, n.label)
    return n.to_proto()


SPLITS = {
    'train.prototxt': 'train',
    'val.prototxt': 'seg11valid',
    'deploy.prototxt': 'deploy',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(fcn, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()

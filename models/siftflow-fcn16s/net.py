"""FCN-16s on SIFT Flow: one VGG16 body, two heads (33 semantic and 3 geometric
classes), two losses.

Run ``python net.py`` (from any directory) to rewrite
trainval.prototxt and test.prototxt next to this file.
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
    fuse_skip, score, siftflow_data, softmax_loss, upsample, vgg16_fc7, write_splits)
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec  # noqa: E402


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    siftflow_data(n, split)
    fc7 = vgg16_fc7(n, n.data)

    # semantic head (33 classes); its loss is plain "loss" so the usual score/loss names hold
    n.score_fr_sem = score(fc7, 33)
    n.upscore2_sem = upsample(n.score_fr_sem, 33, ks=4, stride=2)
    n.score_pool4_sem = score(n.pool4, 33)
    n.score_pool4_semc, n.fuse_pool4_sem = fuse_skip(n.upscore2_sem, n.score_pool4_sem)
    n.upscore16_sem = upsample(n.fuse_pool4_sem, 33, ks=32, stride=16)
    n.score_sem = crop(n.upscore16_sem, n.data)
    n.loss = softmax_loss(n.score_sem, n.sem)

    # geometric head (3 classes: sky, horizontal, vertical)
    n.score_fr_geo = score(fc7, 3)
    n.upscore2_geo = upsample(n.score_fr_geo, 3, ks=4, stride=2)
    n.score_pool4_geo = score(n.pool4, 3)
    n.score_pool4_geoc, n.fuse_pool4_geo = fuse_skip(n.upscore2_geo, n.score_pool4_geo)
    n.upscore16_geo = upsample(n.fuse_pool4_geo, 3, ks=32, stride=16)
    n.score_geo = crop(n.upscore16_geo, n.data)
    n.loss_geo = softmax_loss(n.score_geo, n.geo)
    return n.to_proto()


SPLITS = {
    'trainval.prototxt': 'trainval',
    'test.prototxt': 'test',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    write_splits(fcn, SPLITS, directory)


if __name__ == '__main__':
    write_prototxts()

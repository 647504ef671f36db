"""FCN-16s on NYUDv2, late fusion of color and HHA streams (the paper's FCN-16s
RGB-HHA; the reference repository has no prototxt for it, so this extends
nyud-fcn32s-color-hha with a pool4 skip per stream, averaged like the fc7 scores).

Run ``python net.py`` (from any directory) to rewrite
trainval.prototxt and test.prototxt next to this file.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import netspec.net_spec  # noqa: F401
except ImportError:  # running from a source checkout: its root is two levels up
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from netspec.coord_map import crop  # noqa: E402
from netspec.net_spec import NetSpec, layers as L, params as P, prototxt_text  # noqa: E402

LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def conv_relu(bottom, nout, ks=3, stride=1, pad=1):
    """A learned convolution (weights: lr 1, decay 1; biases: lr 2, decay 0) and its ReLU."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=LEARNED)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def score(bottom, nout):
    """A learned 1x1 classifier (no filler: zeros, or weights from a trained net)."""
    return L.Convolution(bottom, num_output=nout, kernel_size=1, pad=0, param=LEARNED)


def upsample(bottom, nout, ks, stride):
    """Fixed upsampling: a bias-free Deconvolution with lr_mult 0 (bilinear weights set
    by surgery before training)."""
    return L.Deconvolution(bottom, convolution_param=dict(num_output=nout, kernel_size=ks,
                                                          stride=stride, bias_term=False),
                           param=[dict(lr_mult=0)])


def modality_fc7(n, bottom, modality):
    """One VGG16 stream up to fc7, every name suffixed by the modality (conv1_1color, ...);
    returns its drop7."""
    def name(base):
        return base + modality

    n[name('conv1_1')], n[name('relu1_1')] = conv_relu(bottom, 64, pad=100)
    n[name('conv1_2')], n[name('relu1_2')] = conv_relu(n[name('relu1_1')], 64)
    n[name('pool1')] = max_pool(n[name('relu1_2')])

    n[name('conv2_1')], n[name('relu2_1')] = conv_relu(n[name('pool1')], 128)
    n[name('conv2_2')], n[name('relu2_2')] = conv_relu(n[name('relu2_1')], 128)
    n[name('pool2')] = max_pool(n[name('relu2_2')])

    n[name('conv3_1')], n[name('relu3_1')] = conv_relu(n[name('pool2')], 256)
    n[name('conv3_2')], n[name('relu3_2')] = conv_relu(n[name('relu3_1')], 256)
    n[name('conv3_3')], n[name('relu3_3')] = conv_relu(n[name('relu3_2')], 256)
    n[name('pool3')] = max_pool(n[name('relu3_3')])

    n[name('conv4_1')], n[name('relu4_1')] = conv_relu(n[name('pool3')], 512)
    n[name('conv4_2')], n[name('relu4_2')] = conv_relu(n[name('relu4_1')], 512)
    n[name('conv4_3')], n[name('relu4_3')] = conv_relu(n[name('relu4_2')], 512)
    n[name('pool4')] = max_pool(n[name('relu4_3')])

    n[name('conv5_1')], n[name('relu5_1')] = conv_relu(n[name('pool4')], 512)
    n[name('conv5_2')], n[name('relu5_2')] = conv_relu(n[name('relu5_1')], 512)
    n[name('conv5_3')], n[name('relu5_3')] = conv_relu(n[name('relu5_2')], 512)
    n[name('pool5')] = max_pool(n[name('relu5_3')])

    n[name('fc6')], n[name('relu6')] = conv_relu(n[name('pool5')], 4096, ks=7, pad=0)
    n[name('drop6')] = L.Dropout(n[name('relu6')], dropout_ratio=0.5, in_place=True)
    n[name('fc7')], n[name('relu7')] = conv_relu(n[name('drop6')], 4096, ks=1, pad=0)
    n[name('drop7')] = L.Dropout(n[name('relu7')], dropout_ratio=0.5, in_place=True)
    return n[name('drop7')]


def fcn(split):
    """The net for one data split, as a NetParameter."""
    n = NetSpec()
    n.color, n.hha, n.label = L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=3,
                   param_str=str(dict(nyud_dir='../../data/nyud', split=split,
                                      tops=['color', 'hha', 'label'], seed=1337)))

    n.score_frcolor = score(modality_fc7(n, n.color, 'color'), 40)
    n.score_frhha = score(modality_fc7(n, n.hha, 'hha'), 40)
    # late fusion: average the two streams' scores, at stride 32 and at pool4
    n.score_fused = L.Eltwise(n.score_frcolor, n.score_frhha, operation=P.Eltwise.SUM,
                              coeff=[0.5, 0.5])
    n.upscore2 = upsample(n.score_fused, 40, ks=4, stride=2)

    n.score_pool4color = score(n.pool4color, 40)
    n.score_pool4hha = score(n.pool4hha, 40)
    n.score_pool4_fused = L.Eltwise(n.score_pool4color, n.score_pool4hha,
                                    operation=P.Eltwise.SUM, coeff=[0.5, 0.5])
    n.score_pool4c = crop(n.score_pool4_fused, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore16 = upsample(n.fuse_pool4, 40, ks=32, stride=16)
    n.score = crop(n.upscore16, n.color)
    n.loss = L.SoftmaxWithLoss(n.score, n.label,
                               loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


SPLITS = {
    'trainval.prototxt': 'trainval',
    'test.prototxt': 'test',
}


def write_prototxts(directory=HERE):
    """Write one prototxt per entry of SPLITS into ``directory``."""
    for filename, split in SPLITS.items():
        with open(os.path.join(directory, filename), 'w') as f:
            f.write(prototxt_text(fcn(split)))


if __name__ == '__main__':
    write_prototxts()

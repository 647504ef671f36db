"""Layer helpers shared by the FCN models' net.py scripts: the VGG16 trunk and the
score / upsample / crop-and-fuse pieces of the FCN heads.

Each net.py puts this directory on sys.path and imports what it needs; the net's own
topology (data layer, which heads and skips, how many classes) stays in its net.py.
"""
import os

from netspec.coord_map import crop
from netspec.net_spec import layers as L, params as P, prototxt_text

# weights: lr 1, decay 1; biases: lr 2, decay 0
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)  # convolutions per block


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, **fillers):
    """A learned convolution (LEARNED rates; fillers as given, else none) and its ReLU."""
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad,
                         param=LEARNED, **fillers)
    return conv, L.ReLU(conv, in_place=True)


def max_pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def vgg_conv_blocks(n, bottom, widths=VGG16_WIDTHS, suffix='', conv1_1='conv1_1', **fillers):
    """VGG16's five conv blocks, conv1_1 .. pool5, on ``n``; returns pool5.

    conv1_1 is padded by 100 so any input size survives the downsampling and the crops.
    Every name gets ``suffix`` (conv1_1color, ...); ``conv1_1`` renames the first
    convolution (one that cannot load VGG16's conv1_1 weights)."""
    top = bottom
    for block, (width, depth) in enumerate(zip(widths, VGG16_DEPTHS), start=1):
        for i in range(1, depth + 1):
            first = top is bottom
            conv_name = conv1_1 if first else f'conv{block}_{i}'
            relu_name = f'relu{block}_{i}' + suffix
            n[conv_name + suffix], n[relu_name] = conv_relu(top, width, pad=100 if first else 1,
                                                            **fillers)
            top = n[relu_name]
        n[f'pool{block}' + suffix] = max_pool(top)
        top = n[f'pool{block}' + suffix]
    return top


def vgg16_fc7(n, bottom, suffix='', conv1_1='conv1_1', dropout=True):
    """VGG16 up to fc7 (fc6/fc7 as convolutions, each followed by ReLU and in-place
    dropout 0.5) on ``n``; names as in ``vgg_conv_blocks``. Returns drop7.

    ``dropout=False`` leaves out the two Dropout layers (an inference net, like the
    reference voc-fcn8s deploy.prototxt) and returns relu7."""
    pool5 = vgg_conv_blocks(n, bottom, suffix=suffix, conv1_1=conv1_1)
    n['fc6' + suffix], n['relu6' + suffix] = conv_relu(pool5, 4096, ks=7, pad=0)
    top = n['relu6' + suffix]
    if dropout:
        n['drop6' + suffix] = top = L.Dropout(top, dropout_ratio=0.5, in_place=True)
    n['fc7' + suffix], n['relu7' + suffix] = conv_relu(top, 4096, ks=1, pad=0)
    top = n['relu7' + suffix]
    if dropout:
        n['drop7' + suffix] = top = L.Dropout(top, dropout_ratio=0.5, in_place=True)
    return top


def score(bottom, nout, **fillers):
    """A learned 1x1 classifier (no filler unless given: zeros, or weights from a trained net)."""
    return L.Convolution(bottom, num_output=nout, kernel_size=1, pad=0, param=LEARNED, **fillers)


def upsample(bottom, nout, ks, stride, **conv_settings):
    """Fixed upsampling: a bias-free Deconvolution with lr_mult 0 (bilinear weights set
    by surgery before training, unless ``conv_settings`` gives a filler)."""
    return L.Deconvolution(bottom, convolution_param=dict(num_output=nout, kernel_size=ks,
                                                          stride=stride, bias_term=False,
                                                          **conv_settings),
                           param=[dict(lr_mult=0)])


def fuse_skip(upscored, skip_scores):
    """A skip connection: crop ``skip_scores`` to ``upscored`` and add the two.
    Returns (the Crop, the Eltwise sum)."""
    cropped = crop(skip_scores, upscored)
    return cropped, L.Eltwise(upscored, cropped, operation=P.Eltwise.SUM)


def softmax_loss(scores, label, normalize=False):
    """FCN's loss: SoftmaxWithLoss ignoring label 255, by default summed (not normalized)."""
    return L.SoftmaxWithLoss(scores, label,
                             loss_param=dict(normalize=normalize, ignore_label=255))


def write_splits(fcn, splits, directory):
    """Write ``prototxt_text(fcn(split))`` to ``directory/filename`` for each
    ``filename: split`` of ``splits``."""
    for filename, split in splits.items():
        with open(os.path.join(directory, filename), 'w') as f:
            f.write(prototxt_text(fcn(split)))


# --- data layers: the reference datasets, paths relative to a model's directory ---

VOC_MEAN = (104.00699, 116.66877, 122.67892)


def voc_data(n, split):
    """SBD for training, PASCAL VOC 2011 otherwise (paths relative to this directory)."""
    # keys in the order of the reference's param_str (Python 2 printed its dict so)
    if split == 'train':
        pydata_params = dict(sbdd_dir='../../data/sbdd/dataset')
        pylayer = 'SBDDSegDataLayer'
    else:
        pydata_params = dict(voc_dir='../../data/pascal/VOC2011')
        pylayer = 'VOCSegDataLayer'
    pydata_params.update(seed=1337, split=split, mean=VOC_MEAN)
    n.data, n.label = L.Python(module='voc_layers', layer=pylayer, ntop=2,
                               param_str=str(pydata_params))
    return n.data


def siftflow_data(n, split):
    """SIFT Flow images with semantic (sem) and geometric (geo) labels."""
    n.data, n.sem, n.geo = L.Python(module='siftflow_layers', layer='SIFTFlowSegDataLayer',
                                    ntop=3, param_str=str(dict(siftflow_dir='../../data/sift-flow',
                                                               seed=1337, split=split)))
    return n.data


def context_data(n, split):
    """PASCAL-Context images (VOC2010) and 59-class + background labels."""
    n.data, n.label = L.Python(module='pascalcontext_layers',
                               layer='PASCALContextSegDataLayer', ntop=2,
                               param_str=str(dict(context_dir='../../data/pascal-context',
                                                  seed=1337, split=split,
                                                  voc_dir='../../data/pascal')))
    return n.data

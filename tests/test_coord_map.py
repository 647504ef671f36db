"""Crop offsets from coordinate maps: the FCN values and hand-worked small cases."""
import numpy as np
import pytest

from netspec.coord_map import coord_map_from_to, crop, crop_params
from netspec.errors import NetspecError
from netspec.net_spec import NetSpec, layers as L, params as P


def data_top(channels=3):
    return L.Input(shape=dict(dim=[1, channels, 32, 32]))


def conv(bottom, ks, pad=0, stride=1, dilation=1):
    return L.Convolution(bottom, num_output=2, kernel_size=ks, pad=pad, stride=stride,
                         dilation=dilation)


def pool(bottom, ks=2, stride=2):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def deconv(bottom, ks, stride, pad=0):
    return L.Deconvolution(bottom, convolution_param=dict(num_output=2, kernel_size=ks,
                                                          stride=stride, pad=pad, bias_term=False))


def vgg_fcn_trunk(n):
    """VGG16 (conv1_1 pad 100) to score_fr, with the layers that matter to coordinates."""
    bottom = n.data
    for block, depth in enumerate([2, 2, 3, 3, 3], start=1):
        for i in range(1, depth + 1):
            bottom = L.ReLU(conv(bottom, 3, pad=100 if (block, i) == (1, 1) else 1), in_place=True)
        n[f'pool{block}'] = bottom = pool(bottom)
    fc6 = L.Dropout(L.ReLU(conv(bottom, 7), in_place=True), in_place=True)
    fc7 = L.Dropout(L.ReLU(conv(fc6, 1), in_place=True), in_place=True)
    n.score_fr = conv(fc7, 1)


def test_fcn32s_offset_is_19():
    n = NetSpec()
    n.data = data_top()
    vgg_fcn_trunk(n)
    n.upscore = deconv(n.score_fr, 64, 32)
    assert crop_params(n.upscore, n.data) == (2, [19])


def test_fcn16s_offsets_are_5_and_27():
    n = NetSpec()
    n.data = data_top()
    vgg_fcn_trunk(n)
    n.upscore2 = deconv(n.score_fr, 4, 2)
    n.score_pool4 = conv(n.pool4, 1)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore16 = deconv(n.fuse_pool4, 32, 16)
    n.score = crop(n.upscore16, n.data)
    crops = [l for l in n.to_proto().layer if l.type == 'Crop']
    assert [(c.crop_param.axis, list(c.crop_param.offset)) for c in crops] == [(2, [5]), (2, [27])]


def test_fcn8s_offsets_are_5_9_and_31():
    n = NetSpec()
    n.data = data_top()
    vgg_fcn_trunk(n)
    n.upscore2 = deconv(n.score_fr, 4, 2)
    n.score_pool4c = crop(conv(n.pool4, 1), n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = deconv(n.fuse_pool4, 4, 2)
    n.score_pool3c = crop(conv(n.pool3, 1), n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = deconv(n.fuse_pool3, 16, 8)
    n.score = crop(n.upscore8, n.data)
    offsets = {l.name: list(l.crop_param.offset) for l in n.to_proto().layer if l.type == 'Crop'}
    assert offsets == {'score_pool4c': [5], 'score_pool3c': [9], 'score': [31]}


# Hand-worked cases.  For a window layer, output position y covers input positions
# s*y - p ... s*y - p + k_eff - 1, whose centre is s*y - p + (k_eff - 1)/2.

def test_valid_convolution_is_cropped_by_half_its_kernel():
    data = data_top()
    out = conv(data, 5)                       # y -> y + 2
    assert crop_params(data, out) == (2, [2])
    padded = conv(data, 5, pad=1)             # y -> y + 1
    assert crop_params(data, padded) == (2, [1])
    same = conv(data, 3, pad=1)               # y -> y
    assert crop_params(data, same) == (2, [0])


def test_dilated_convolution_uses_the_effective_kernel():
    data = data_top()
    out = conv(data, 3, dilation=3)           # effective kernel 7: y -> y + 3
    assert crop_params(data, out) == (2, [3])


def test_per_axis_kernels_give_per_axis_offsets():
    data = data_top()
    out = conv(data, [3, 7])                  # y -> y + 1 along H, y + 3 along W
    assert crop_params(data, out) == (2, [1, 3])


def test_pool_then_upsample_by_two():
    data = data_top()
    # pool k2 s2: y -> 2y + 1/2; deconv k4 s2 inverts y -> 2y + 3/2, i.e. u -> (u - 3/2) / 2
    # data position over upsampled position u: 2 * (u - 3/2) / 2 + 1/2 = u - 1
    up = deconv(pool(data), 4, 2)
    axis, a, b = coord_map_from_to(up, data)
    assert axis == 1 and list(a) == [1] and list(b) == [1]
    assert crop_params(up, data) == (2, [1])
    # with deconv pad 1 the inverse is u -> (u - 1/2) / 2, and data lies over 2 * that + 1/2 = u
    assert crop_params(deconv(pool(data), 4, 2, pad=1), data) == (2, [0])


def test_strided_convolution_and_matching_deconvolution():
    data = data_top()
    down = conv(data, 4, stride=4)            # y -> 4y + 3/2
    up = deconv(down, 8, 4)                   # z -> 4z + 7/2, inverted: u -> (u - 7/2) / 4
    # data over u: 4 * (u - 7/2) / 4 + 3/2 = u - 2
    assert crop_params(up, data) == (2, [2])


def test_crop_layers_compose_and_elementwise_layers_keep_coordinates():
    data = data_top()
    inner = conv(data, 5)                                  # data = inner + 2
    cropped = L.Crop(L.ReLU(data), inner, crop_param=dict(axis=2, offset=2))  # cropped = inner
    outer = conv(L.Eltwise(inner, cropped), 3)             # inner = outer + 1
    assert crop_params(data, outer) == (2, [3])


def test_deconvolution_offset_agrees_with_a_numerical_impulse_response():
    """A 1-D stride-1 conv and a stride-2 deconv with symmetric kernels move the centre of an
    impulse exactly as the maps say; compare with NumPy."""
    kernel_conv, pad_conv = np.array([1.0, 2.0, 3.0, 2.0, 1.0]), 1
    kernel_up, stride_up = np.array([1.0, 3.0, 3.0, 1.0]), 2

    def conv1d(x):
        x = np.pad(x, pad_conv)
        return np.correlate(x, kernel_conv, mode='valid')

    def deconv1d(x):
        out = np.zeros(stride_up * (len(x) - 1) + len(kernel_up))
        for i, value in enumerate(x):
            out[stride_up * i:stride_up * i + len(kernel_up)] += value * kernel_up
        return out

    def centre(x):
        return np.sum(np.arange(len(x)) * x) / np.sum(x)

    data = data_top()
    up = deconv(conv(data, 5, pad=1), 4, 2)
    _, a, b = coord_map_from_to(data, up)         # data position = a * up position + b
    impulse = np.zeros(20)
    impulse[9] = 1.0
    response = deconv1d(conv1d(impulse))
    assert float(a[0]) * centre(response) + float(b[0]) == pytest.approx(9.0)


def test_unalignable_tops_raise_netspec_errors():
    data = data_top()
    with pytest.raises(NetspecError, match='scale'):
        crop(pool(data), data)
    with pytest.raises(NetspecError, match='before'):
        crop(data, conv(data, 3, pad=2))          # the second top starts 1 before the data
    with pytest.raises(NetspecError, match='whole number'):
        crop(data, conv(data, 2))                 # an even kernel: y -> y + 1/2
    other = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    with pytest.raises(NetspecError, match='no common input'):
        crop(data, other)

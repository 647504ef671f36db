"""A small AlexNet-shaped deploy net for the keypoint experiments' tests and defaults.

conv1 (5x5, stride 2) - pool1 (3x3/2) - conv2 - pool2 (3x3/2) - conv3 - conv4 - conv5
(3x3, stride 8 overall) - pool5 (2x2/2, stride 16), ReLUs after every convolution,
xavier-initialised: run with random weights it gives weak but local features.
Receptive fields: conv3 41, conv4 57, conv5 73, pool5 81 pixels.
"""


def _conv(name, bottom, out, kernel, stride=1, pad=0):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  convolution_param {{ num_output: {out} kernel_size: {kernel} stride: {stride} pad: {pad}\n'
            f'    weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }} }}\n'
            f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n')


def _pool(name, bottom, kernel, stride):
    return (f'layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"\n'
            f'  pooling_param {{ pool: MAX kernel_size: {kernel} stride: {stride} }} }}\n')


def tiny_net_prototxt(size=64, widths=(16, 32, 48, 48, 32)):
    """The net's prototxt text (input ``data`` of 1 x 3 x size x size; any size runs)."""
    c1, c2, c3, c4, c5 = widths
    return ('name: "keypoints-tiny-alexnet"\n'
            f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 '
            f'dim: {size} dim: {size} }} }} }}\n'
            + _conv("conv1", "data", c1, 5, 2, 2) + _pool("pool1", "conv1", 3, 2)
            + _conv("conv2", "pool1", c2, 3, 1, 1) + _pool("pool2", "conv2", 3, 2)
            + _conv("conv3", "pool2", c3, 3, 1, 1) + _conv("conv4", "conv3", c4, 3, 1, 1)
            + _conv("conv5", "conv4", c5, 3, 1, 1) + _pool("pool5", "conv5", 2, 2))


def write_tiny_net(path, size=64):
    with open(path, "w") as f:
        f.write(tiny_net_prototxt(size))
    return path

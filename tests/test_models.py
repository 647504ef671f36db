"""The model zoo: each net.py regenerates its checked-in prototxts, which hold the
reference FCN settings; every solver parses and names nets that exist."""
import importlib.util
import os

import pytest
from google.protobuf import text_format

from netspec.proto import caffe_pb2

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models')
# the pairwise region nets of the thesis have tests of their own (tests/test_region_models.py)
REGION_DIRS = {'coco-regions-vgg16', 'coco-regions-slim'}
NET_PY_DIRS = sorted(d for d in os.listdir(MODELS) if os.path.isfile(os.path.join(MODELS, d, 'net.py')))
MODEL_DIRS = [d for d in NET_PY_DIRS if d not in REGION_DIRS]     # the FCN zoo

EXPECTED_DIRS = {
    'voc-fcn32s', 'voc-fcn16s', 'voc-fcn8s', 'voc-fcn8s-atonce', 'voc-fcn-alexnet',
    'nyud-fcn32s-color', 'nyud-fcn32s-hha', 'nyud-fcn32s-color-d', 'nyud-fcn32s-color-hha',
    'nyud-fcn16s-color-hha', 'siftflow-fcn32s', 'siftflow-fcn16s', 'siftflow-fcn8s',
    'pascalcontext-fcn32s', 'pascalcontext-fcn16s', 'pascalcontext-fcn8s', 'quickstart-fcn8s'}

# Crop layer -> offset, from the reference nets (500x500 arithmetic: 19 / 5, 27 / 5, 9, 31).
OFFSETS_32S = {'score': 19}
OFFSETS_16S = {'score_pool4c': 5, 'score': 27}
OFFSETS_8S = {'score_pool4c': 5, 'score_pool3c': 9, 'score': 31}
EXPECTED_OFFSETS = {
    'voc-fcn32s': OFFSETS_32S, 'voc-fcn16s': OFFSETS_16S, 'voc-fcn8s': OFFSETS_8S,
    'voc-fcn8s-atonce': OFFSETS_8S, 'voc-fcn-alexnet': {'score': 18},
    'nyud-fcn32s-color': OFFSETS_32S, 'nyud-fcn32s-hha': OFFSETS_32S,
    'nyud-fcn32s-color-d': OFFSETS_32S, 'nyud-fcn32s-color-hha': OFFSETS_32S,
    'nyud-fcn16s-color-hha': OFFSETS_16S,
    'siftflow-fcn32s': {'score_sem': 19, 'score_geo': 19},
    'siftflow-fcn16s': {'score_pool4_semc': 5, 'score_sem': 27,
                        'score_pool4_geoc': 5, 'score_geo': 27},
    'siftflow-fcn8s': {'score_pool4_semc': 5, 'score_pool3_semc': 9, 'score_sem': 31,
                       'score_pool4_geoc': 5, 'score_pool3_geoc': 9, 'score_geo': 31},
    'pascalcontext-fcn32s': OFFSETS_32S, 'pascalcontext-fcn16s': OFFSETS_16S,
    'pascalcontext-fcn8s': OFFSETS_8S, 'quickstart-fcn8s': OFFSETS_8S,
}
# (kernel, stride) of the upsampling layers, in net order
UPSAMPLING = {'32s': [(64, 32)], '16s': [(4, 2), (32, 16)], '8s': [(4, 2), (4, 2), (16, 8)]}
NUM_OUTPUTS = {'voc': 21, 'nyud': 40, 'pascalcontext': 60, 'quickstart': 6}
BASE_LR = {'voc-fcn32s': 1e-10, 'voc-fcn16s': 1e-12, 'voc-fcn8s': 1e-14,
           'voc-fcn8s-atonce': 1e-10, 'voc-fcn-alexnet': 1e-4,
           'siftflow-fcn32s': 1e-10, 'siftflow-fcn16s': 1e-12, 'siftflow-fcn8s': 1e-12,
           'pascalcontext-fcn32s': 1e-10, 'pascalcontext-fcn16s': 1e-12,
           'pascalcontext-fcn8s': 1e-14, 'nyud-fcn32s-color-hha': 1e-12}


def load_net_module(model_dir):
    path = os.path.join(MODELS, model_dir, 'net.py')
    spec = importlib.util.spec_from_file_location('model_' + model_dir.replace('-', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def checked_in_nets(model_dir):
    module = load_net_module(model_dir)
    nets = {}
    for filename in module.SPLITS:
        with open(os.path.join(MODELS, model_dir, filename)) as f:
            nets[filename] = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    return nets


def test_every_reference_model_is_present():
    assert EXPECTED_DIRS <= set(MODEL_DIRS)


@pytest.mark.parametrize('model_dir', NET_PY_DIRS)
def test_net_py_regenerates_the_checked_in_prototxts_byte_for_byte(model_dir, tmp_path):
    module = load_net_module(model_dir)
    module.write_prototxts(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(module.SPLITS)
    for filename in module.SPLITS:
        with open(os.path.join(MODELS, model_dir, filename), 'rb') as f:
            checked_in = f.read()
        assert (tmp_path / filename).read_bytes() == checked_in, f'{model_dir}/{filename}'


@pytest.mark.parametrize('model_dir', MODEL_DIRS)
def test_crop_offsets_match_the_reference(model_dir):
    for filename, net in checked_in_nets(model_dir).items():
        crops = {l.name: (l.crop_param.axis, list(l.crop_param.offset))
                 for l in net.layer if l.type == 'Crop'}
        expected = {name: (2, [offset]) for name, offset in EXPECTED_OFFSETS[model_dir].items()}
        assert crops == expected, filename


def stride_of(model_dir):
    return next(s for s in ('32s', '16s', '8s') if f'fcn{s}' in model_dir)


@pytest.mark.parametrize('model_dir', [d for d in MODEL_DIRS if 'alexnet' not in d])
def test_vgg_fcn_layers_follow_the_reference(model_dir):
    for filename, net in checked_in_nets(model_dir).items():
        layers = {l.name: l for l in net.layer}
        first_convs = [l for l in net.layer
                       if l.type == 'Convolution' and l.name.startswith('conv1_1')]
        assert first_convs and all(list(l.convolution_param.pad) == [100] for l in first_convs)
        fc6 = [l for l in net.layer if l.name.startswith('fc6')]
        assert fc6 and all(list(l.convolution_param.kernel_size) == [7] for l in fc6)
        learned = [l for l in net.layer if l.type == 'Convolution']
        for layer in learned:
            assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)], layer.name
        scores = [l for l in learned if l.name.startswith('score')]
        prefix = model_dir.split('-')[0]
        if prefix in NUM_OUTPUTS:
            assert {l.convolution_param.num_output for l in scores} == {NUM_OUTPUTS[prefix]}
        else:  # SIFT Flow: semantic and geometric heads
            assert {l.convolution_param.num_output for l in scores} == {33, 3}
        deconvs = [l for l in net.layer if l.type == 'Deconvolution']
        for layer in deconvs:
            p = layer.convolution_param
            assert p.HasField('bias_term') and not p.bias_term
            assert [s.lr_mult for s in layer.param] == [0]
        heads = 2 if prefix == 'siftflow' else 1
        kernels = [(p.kernel_size[0], p.stride[0]) for p in (l.convolution_param for l in deconvs)]
        assert sorted(kernels) == sorted(UPSAMPLING[stride_of(model_dir)] * heads)
        for name, layer in layers.items():
            if layer.type in ('ReLU', 'Dropout'):
                assert list(layer.top) == list(layer.bottom), name
        if model_dir != 'quickstart-fcn8s':  # trained from scratch: it has fillers
            assert not any(l.convolution_param.HasField('weight_filler') for l in learned)


@pytest.mark.parametrize('model_dir', MODEL_DIRS)
def test_losses_and_data_layers(model_dir):
    for filename, net in checked_in_nets(model_dir).items():
        losses = [l for l in net.layer if l.type == 'SoftmaxWithLoss']
        data = net.layer[0]
        if filename == 'deploy.prototxt':
            assert not losses and data.type == 'Input'
            continue
        assert data.type == 'Python' and data.python_param.param_str.startswith('{')
        assert len(losses) == (2 if model_dir.startswith('siftflow') else 1)
        for loss in losses:
            assert loss.loss_param.ignore_label == 255
            if model_dir == 'quickstart-fcn8s':
                assert loss.loss_param.normalization == caffe_pb2.LossParameter.VALID
            else:
                assert loss.loss_param.HasField('normalize')
                assert loss.loss_param.normalize == (model_dir == 'voc-fcn-alexnet')
        module = data.python_param.module
        assert module == model_dir.split('-')[0].replace('quickstart', 'voc') + '_layers'


def test_at_once_scales_skips_by_fixed_constants():
    net = checked_in_nets('voc-fcn8s-atonce')['train.prototxt']
    scales = {l.name: l for l in net.layer if l.type == 'Scale'}
    assert sorted(scales) == ['scale_pool3', 'scale_pool4']
    assert scales['scale_pool4'].scale_param.filler.value == pytest.approx(0.01)
    assert scales['scale_pool3'].scale_param.filler.value == pytest.approx(0.0001)
    for layer in scales.values():
        assert [p.lr_mult for p in layer.param] == [0]


@pytest.mark.parametrize('model_dir', MODEL_DIRS)
def test_solver_parses_and_names_existing_nets(model_dir):
    path = os.path.join(MODELS, model_dir, 'solver.prototxt')
    with open(path) as f:
        solver = text_format.Parse(f.read(), caffe_pb2.SolverParameter())
    for net_file in [solver.train_net] + list(solver.test_net):
        assert os.path.isfile(os.path.join(MODELS, model_dir, net_file)), net_file
    if model_dir in BASE_LR:
        assert solver.base_lr == pytest.approx(BASE_LR[model_dir], rel=1e-6)
    if model_dir == 'voc-fcn-alexnet':
        assert (solver.momentum, solver.iter_size) == (pytest.approx(0.9), 20)
    elif model_dir != 'quickstart-fcn8s':
        assert solver.momentum == pytest.approx(0.99) and solver.iter_size == 1
        assert solver.lr_policy == 'fixed'
        assert solver.weight_decay == pytest.approx(0.0005)

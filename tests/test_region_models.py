"""The pairwise region nets of the model zoo (models/coco-regions-vgg16, models/coco-regions-slim):
net.py regenerates the checked-in prototxts, the VGG16 net follows Table 4.1 of Long's thesis
and takes VGG16's weights by name, both build, and the slim net trains and is scored."""
import importlib.util
import os

import numpy as np
import pytest
from google.protobuf import text_format

from netspec.proto import caffe_pb2

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'models')
REGION_MODELS = ['coco-regions-vgg16', 'coco-regions-slim']

# Table 4.1: feature layer, stride (= upsampling), kernel, window in pixels
TABLE_4_1 = [('conv2_2', 2, 5, 28), ('conv3_3', 4, 5, 56), ('conv4_3', 8, 9, 144),
             ('conv5_3', 16, 9, 288), ('fc6', 32, 9, 576)]
VGG16_PARAM_SHAPES = {
    'conv1_1': (64, 3, 3, 3), 'conv1_2': (64, 64, 3, 3), 'conv2_1': (128, 64, 3, 3),
    'conv2_2': (128, 128, 3, 3), 'conv3_1': (256, 128, 3, 3), 'conv3_2': (256, 256, 3, 3),
    'conv3_3': (256, 256, 3, 3), 'conv4_1': (512, 256, 3, 3), 'conv4_2': (512, 512, 3, 3),
    'conv4_3': (512, 512, 3, 3), 'conv5_1': (512, 512, 3, 3), 'conv5_2': (512, 512, 3, 3),
    'conv5_3': (512, 512, 3, 3), 'fc6': (4096, 512, 7, 7)}


def load_module(model_dir, filename='net.py'):
    path = os.path.join(MODELS, model_dir, filename)
    name = 'region_model_' + model_dir.replace('-', '_') + '_' + filename[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_net(model_dir, filename):
    with open(os.path.join(MODELS, model_dir, filename)) as f:
        return text_format.Parse(f.read(), caffe_pb2.NetParameter())


@pytest.mark.parametrize('model_dir', REGION_MODELS)
def test_solver_parses_and_names_existing_nets(model_dir):
    with open(os.path.join(MODELS, model_dir, 'solver.prototxt')) as f:
        solver = text_format.Parse(f.read(), caffe_pb2.SolverParameter())
    for net_file in [solver.train_net] + list(solver.test_net):
        assert os.path.isfile(os.path.join(MODELS, model_dir, net_file)), net_file
    if model_dir == 'coco-regions-vgg16':      # the thesis's sec. 4.4.4
        assert solver.type in ('', 'SGD') and solver.momentum == pytest.approx(0.99)
        assert solver.lr_policy == 'fixed' and solver.iter_size == 1
        assert solver.base_lr == pytest.approx(1e-5)


def pathways_of(net):
    """{name: (feature blob, kernel, K^2, transpose window, stride, upsample, objectness bottom)}."""
    layers = {l.name: l for l in net.layer}
    out = {}
    for name in sorted(l.name[len('regions_'):] for l in net.layer if l.name.startswith('regions_')):
        pair, transpose, matrix = layers[f'pair_{name}'], layers[f'pairT_{name}'], layers[f'regions_{name}']
        assert list(transpose.bottom) == [pair.top[0]] and list(matrix.bottom) == [transpose.top[0]]
        assert list(matrix.convolution_param.kernel_size) == [1]
        k2 = pair.convolution_param.num_output
        assert matrix.convolution_param.num_output == k2
        loss = layers.get(f'loss_{name}')
        geometry = (None, None)
        if loss is not None:
            assert loss.type == 'PairRegionLoss' and list(loss.bottom) == [matrix.top[0], 'instances']
            assert loss.pair_param.window ** 2 == k2
            geometry = (loss.pair_param.stride, loss.pair_param.upsample)
            objloss = layers[f'objloss_{name}']
            assert objloss.type == 'SigmoidCrossEntropyLoss'
            assert list(objloss.bottom) == [f'objectness_{name}', loss.top[1]]
            assert objloss.loss_param.ignore_label == 255
        objectness = layers[f'objectness_{name}']
        assert objectness.convolution_param.num_output == 1
        out[name] = (pair.bottom[0], pair.convolution_param.kernel_size[0], k2,
                     transpose.pair_param.window, *geometry, objectness.bottom[0])
    return out


def test_vgg16_region_net_follows_table_4_1():
    for filename in ('train.prototxt', 'val.prototxt', 'deploy.prototxt'):
        net = read_net('coco-regions-vgg16', filename)
        found = pathways_of(net)
        assert sorted(found) == ['p1', 'p2', 'p3', 'p4', 'p5']
        for i, (feature, stride, kernel, window_px) in enumerate(TABLE_4_1, start=1):
            k = window_px // stride                        # 14, 14, 18, 18, 18
            got = found[f'p{i}']
            assert got[:4] == (feature, kernel, k * k, k), (filename, i)
            if filename != 'deploy.prototxt':
                assert got[4:6] == (stride, stride)
        layers = {l.name: l for l in net.layer}
        assert list(layers['conv1_1'].convolution_param.pad) == [1]    # grids on the image, no crop
        assert list(layers['fc6'].convolution_param.pad) == [3]
        assert not any(l.type in ('Crop', 'Dropout') for l in net.layer)
        if filename == 'deploy.prototxt':
            assert net.layer[0].type == 'Input' and not any('Loss' in l.type for l in net.layer)
        else:
            data = net.layer[0]
            assert data.type == 'Python' and data.python_param.module == 'coco_layers'
            params = eval(data.python_param.param_str, {'__builtins__': {}})
            assert params['randomize'] == (filename == 'train.prototxt')
            losses = [l for l in net.layer if l.type == 'PairRegionLoss']
            assert len(losses) == 5 and all(l.pair_param.min_scale == 0 for l in losses)


def graph_of(model_dir, filename, phase, side):
    from netspec.graph import build_graph
    from netspec.layers import TEST, TRAIN
    net = read_net(model_dir, filename)
    phase = TRAIN if phase == 'train' else TEST
    if net.layer[0].type == 'Python':
        shapes = {'data': (1, 3, side[0], side[1]), 'instances': (1, 1, side[0], side[1])}
        return build_graph(net, phase, input_shapes=shapes, host_layers=[net.layer[0].name])
    net.layer[0].input_param.shape[0].dim[:] = [1, 3, *side]
    return build_graph(net, phase)


@pytest.mark.parametrize('filename,phase', [('train.prototxt', 'train'), ('deploy.prototxt', 'test')])
def test_vgg16_region_net_builds_with_grids_on_the_image(filename, phase):
    h, w = 100, 132
    graph = graph_of('coco-regions-vgg16', filename, phase, (h, w))
    for i, (_, stride, _, window_px) in enumerate(TABLE_4_1, start=1):
        k = window_px // stride
        grid = (-(-h // stride), -(-w // stride))
        assert graph.blob_shapes[f'regions_p{i}'] == (1, k * k, *grid)
        assert graph.blob_shapes[f'objectness_p{i}'] == (1, 1, *grid)
        if phase == 'train':
            assert graph.blob_shapes[f'loss_p{i}'] == ()
            assert graph.blob_shapes[f'objtarget_p{i}'] == (1, 1, *grid)
    for name, shape in VGG16_PARAM_SHAPES.items():        # what vgg16-to-fcn's transplant needs
        assert tuple(graph.param_shapes[name][0]) == shape, name


def test_vgg16_region_net_takes_vgg16_weights_by_name():
    """The surgery (netspec surgery vgg16-to-fcn) on stand-in VGG16 blobs: conv layers copied,
    fc6's InnerProduct (4096 x 25088) coerced to 4096x512x7x7, fc7/fc8 skipped, pathways kept."""
    from netspec.commands.surgery import target_net, transplant_into
    path = os.path.join(MODELS, 'coco-regions-vgg16', 'train.prototxt')
    graph = target_net(path, {'data': (1, 3, 64, 64), 'instances': (1, 1, 64, 64)})
    rs = np.random.RandomState(0)
    old = {name: [rs.randn(*((4096, 25088) if name == 'fc6' else shape)).astype(np.float32) * 0.01,
                  rs.randn(shape[0]).astype(np.float32)]
           for name, shape in list(VGG16_PARAM_SHAPES.items())[:2] + [('fc6', (4096, 512, 7, 7))]}
    old['fc7'] = [np.zeros((4096, 4096), np.float32), np.zeros(4096, np.float32)]
    weights, lines = transplant_into(graph, old, interp=True)
    np.testing.assert_array_equal(weights['conv1_1'][0], old['conv1_1'][0])
    np.testing.assert_array_equal(weights['fc6'][0], old['fc6'][0].reshape(4096, 512, 7, 7))
    assert any('fc7' in line for line in lines)
    assert np.abs(np.asarray(weights['pair_p1'][0])).sum() > 0      # the fillers, not zeros


def test_slim_net_trains_and_is_scored(tmp_path):
    run = load_module('coco-regions-slim', 'run.py')
    net = load_module('coco-regions-slim')
    data = str(tmp_path / 'data')
    mean = run.make_data(data, n_train=6, n_val=2, size=64, seed=3)
    weights, losses = run.train(str(tmp_path), data, mean, iters=24, seed=0, quiet=True)
    assert os.path.isfile(weights) and len(losses) >= 3
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    graph = graph_of('coco-regions-slim', 'deploy.prototxt', 'test', (64, 64))
    assert graph.blob_shapes['regions_p1'] == (1, 144, 32, 32)
    deploy = run.write_deploy(str(tmp_path / 'deploy.prototxt'))
    annotations = os.path.join(data, 'annotations', 'instances_val.json')
    metrics = run.score(deploy, weights, annotations, net.PATHWAYS, mean, str(tmp_path / 'scores'), quiet=True)
    assert metrics['images'] == 2 and metrics['instances'] > 0
    for key in ('R@50', 'R@70', 'ABO', 'AR', 'AR@10', 'AR@100'):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics['R@50'] >= metrics['R@70'] and metrics['AR@10'] <= metrics['AR@100'] <= metrics['AR']

"""The NetSpec DSL: keyword routing, naming, graph order, round trip and errors."""
import pytest
from google.protobuf import text_format

from netspec.errors import NetspecError
from netspec.net_spec import NetSpec, layers as L, params as P, to_proto, prototxt_text
from netspec.proto import caffe_pb2


def layer_named(net, name):
    matches = [layer for layer in net.layer if layer.name == name]
    assert len(matches) == 1, name
    return matches[0]


def input_top(dims=(1, 3, 8, 8)):
    return L.Input(shape=dict(dim=list(dims)))


def test_convolution_keywords_go_to_convolution_param_and_generic_fields_to_the_layer():
    n = NetSpec()
    n.data = input_top()
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=64, pad=1,
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                           weight_filler=dict(type='xavier'),
                           bias_filler=dict(type='constant', value=0.5))
    conv = layer_named(n.to_proto(), 'conv')
    assert conv.type == 'Convolution'
    assert list(conv.bottom) == ['data'] and list(conv.top) == ['conv']
    p = conv.convolution_param
    assert (p.num_output, list(p.pad), list(p.kernel_size)) == (64, [1], [3])
    assert p.weight_filler.type == 'xavier'
    assert (p.bias_filler.type, p.bias_filler.value) == ('constant', 0.5)
    assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(1, 1), (2, 0)]


def test_deconvolution_keywords_and_explicit_convolution_param():
    data = input_top()
    implicit = to_proto(L.Deconvolution(data, num_output=4, kernel_size=4, stride=2,
                                        bias_term=False))
    explicit = to_proto(L.Deconvolution(data, convolution_param=dict(
        num_output=4, kernel_size=4, stride=2, bias_term=False), param=[dict(lr_mult=0)]))
    for net in (implicit, explicit):
        p = net.layer[-1].convolution_param
        assert (p.num_output, list(p.kernel_size), list(p.stride)) == (4, [4], [2])
        assert p.HasField('bias_term') and not p.bias_term
    assert [s.lr_mult for s in explicit.layer[-1].param] == [0]


def test_loss_keywords_reach_loss_param_softmax_param_and_loss_weight():
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer', ntop=2, param_str='{}')
    n.loss = L.SoftmaxWithLoss(n.data, n.label, ignore_label=255, normalization=P.Loss.VALID,
                               axis=1, loss_weight=0.5)
    n.loss2 = L.SoftmaxWithLoss(n.data, n.label, loss_param=dict(normalize=False, ignore_label=255))
    net = n.to_proto()
    loss = layer_named(net, 'loss')
    assert loss.loss_param.ignore_label == 255
    assert loss.loss_param.normalization == 1  # VALID in caffe.proto's NormalizationMode
    assert loss.softmax_param.axis == 1
    assert list(loss.loss_weight) == [0.5]
    loss2 = layer_named(net, 'loss2')
    assert loss2.loss_param.HasField('normalize') and not loss2.loss_param.normalize
    assert list(loss2.bottom) == ['data', 'label']


def test_python_layer_param_and_ntop():
    n = NetSpec()
    n.color, n.hha, n.label = L.Python(module='nyud_layers', layer='NYUDSegDataLayer', ntop=3,
                                       param_str="{'split': 'test'}")
    layer = n.to_proto().layer[0]
    assert layer.name == 'color'
    assert list(layer.top) == ['color', 'hha', 'label']
    python_param = layer.python_param
    assert (python_param.module, python_param.layer) == ('nyud_layers', 'NYUDSegDataLayer')
    assert layer.python_param.param_str == "{'split': 'test'}"


def test_enums_come_from_the_schema_and_strings_are_accepted():
    # numbers as written in BVLC caffe.proto
    assert (P.Pooling.MAX, P.Pooling.AVE, P.Pooling.STOCHASTIC) == (0, 1, 2)
    assert (P.Eltwise.PROD, P.Eltwise.SUM, P.Eltwise.MAX) == (0, 1, 2)
    assert (P.Phase.TRAIN, P.Phase.TEST) == (0, 1)
    data = input_top()
    by_name = to_proto(L.Pooling(data, pool='AVE', kernel_size=2))
    assert by_name.layer[-1].pooling_param.pool == 1


def test_in_place_layers_reuse_the_bottom_and_take_the_assigned_layer_name():
    n = NetSpec()
    n.data = input_top()
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=1)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.drop = L.Dropout(n.relu, dropout_ratio=0.3, in_place=True)
    n.next = L.Convolution(n.drop, num_output=2, kernel_size=1)
    net = n.to_proto()
    assert [l.name for l in net.layer] == ['data', 'conv', 'relu', 'drop', 'next']
    for name in ('relu', 'drop'):
        assert list(layer_named(net, name).bottom) == ['conv']
        assert list(layer_named(net, name).top) == ['conv']
    assert list(layer_named(net, 'next').bottom) == ['conv']
    assert layer_named(net, 'drop').dropout_param.dropout_ratio == pytest.approx(0.3)


def test_repeated_and_nested_values():
    n = NetSpec()
    n.data = L.Input(shape=[dict(dim=[1, 3, 5, 7]), dict(dim=[1, 1, 5, 7])], ntop=1)
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=[3, 5], pad=(1, 2), stride=2,
                           include=dict(phase=P.Phase.TEST))
    net = n.to_proto()
    shapes = [list(s.dim) for s in layer_named(net, 'data').input_param.shape]
    assert shapes == [[1, 3, 5, 7], [1, 1, 5, 7]]
    conv = layer_named(net, 'conv')
    assert list(conv.convolution_param.kernel_size) == [3, 5]
    assert list(conv.convolution_param.pad) == [1, 2]
    assert list(conv.convolution_param.stride) == [2]  # one value for a repeated field
    assert [rule.phase for rule in conv.include] == [1]


def test_unnamed_tops_get_pycaffe_style_auto_names_in_dependency_order():
    data = input_top()
    conv_a = L.Convolution(data, num_output=2, kernel_size=1)
    conv_b = L.Convolution(data, num_output=2, kernel_size=1)
    total = L.Eltwise(L.ReLU(conv_a), conv_b, operation=P.Eltwise.SUM)
    net = to_proto(total)
    assert [l.name for l in net.layer] == ['Input1', 'Convolution1', 'ReLU1', 'Convolution2',
                                           'Eltwise1']
    assert list(net.layer[-1].bottom) == ['ReLU1', 'Convolution2']
    assert list(net.layer[1].bottom) == ['Input1'] and list(net.layer[3].bottom) == ['Input1']


def test_netspec_item_access_update_and_ntop_zero():
    n = NetSpec()
    n['data'] = input_top()
    n.silence = L.Silence(n['data'], ntop=0)
    assert 'data' in n and n.keys() == ['data', 'silence']
    n.update('data', dict(shape=dict(dim=[2, 1, 3, 3])))  # replaces the keyword, like pycaffe
    net = n.to_proto()
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 1, 3, 3]]
    assert net.layer[1].name == 'silence' and list(net.layer[1].top) == []


VGG_BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]


def fcn32s(num_classes=21):
    """FCN-32s as the reference writes it, with a hand-set crop offset."""
    learned = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='SBDDSegDataLayer', ntop=2,
                               param_str=str(dict(split='train', seed=1337)))
    bottom = n.data
    for block, (width, depth) in enumerate(VGG_BLOCKS, start=1):
        for i in range(1, depth + 1):
            conv = f'conv{block}_{i}'
            n[conv] = L.Convolution(bottom, kernel_size=3, stride=1, num_output=width,
                                    pad=100 if conv == 'conv1_1' else 1, param=learned)
            n[f'relu{block}_{i}'] = bottom = L.ReLU(n[conv], in_place=True)
        n[f'pool{block}'] = bottom = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.fc6 = L.Convolution(bottom, kernel_size=7, num_output=4096, pad=0, param=learned)
    n.relu6 = L.ReLU(n.fc6, in_place=True)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7 = L.Convolution(n.drop6, kernel_size=1, num_output=4096, pad=0, param=learned)
    n.relu7 = L.ReLU(n.fc7, in_place=True)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=num_classes, kernel_size=1, pad=0, param=learned)
    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=num_classes, kernel_size=64, stride=32, bias_term=False),
        param=[dict(lr_mult=0)])
    n.score = L.Crop(n.upscore, n.data, crop_param=dict(axis=2, offset=19))
    n.loss = L.SoftmaxWithLoss(n.score, n.label, loss_param=dict(normalize=False, ignore_label=255))
    return n.to_proto()


def test_fcn32s_prototxt_round_trips_through_the_text_format():
    net = fcn32s()
    text = prototxt_text(net)
    parsed = text_format.Parse(text, caffe_pb2.NetParameter())
    assert parsed == net
    assert prototxt_text(parsed) == text

    expected_names = ['data']
    for block, (_, depth) in enumerate(VGG_BLOCKS, start=1):
        for i in range(1, depth + 1):
            expected_names += [f'conv{block}_{i}', f'relu{block}_{i}']
        expected_names.append(f'pool{block}')
    expected_names += ['fc6', 'relu6', 'drop6', 'fc7', 'relu7', 'drop7', 'score_fr', 'upscore',
                       'score', 'loss']
    assert [l.name for l in parsed.layer] == expected_names
    assert list(layer_named(parsed, 'conv1_1').convolution_param.pad) == [100]
    assert list(layer_named(parsed, 'conv5_3').bottom) == ['conv5_2']
    assert list(layer_named(parsed, 'pool5').bottom) == ['conv5_3']
    assert list(layer_named(parsed, 'fc7').bottom) == ['fc6']
    assert list(layer_named(parsed, 'score').bottom) == ['upscore', 'data']
    assert 'kernel_size: 64' in text and 'pool: MAX' in text


def test_unknown_keyword_names_the_type_the_keyword_and_a_suggestion():
    data = input_top()
    with pytest.raises(NetspecError) as error:
        L.Convolution(data, kernal_size=3)
    message = str(error.value)
    assert 'Convolution' in message and "'kernal_size'" in message and "'kernel_size'" in message
    assert 'test_net_spec.py:' in message  # points at the user's line
    assert '\n' not in message


def test_errors_inside_nested_values_and_enums():
    data = input_top()
    with pytest.raises(NetspecError, match=r"tpye.*did you mean 'type'"):
        L.Convolution(data, num_output=1, kernel_size=1, weight_filler=dict(tpye='xavier'))
    with pytest.raises(NetspecError, match=r"'MAXX'.*did you mean 'MAX'"):
        L.Pooling(data, pool='MAXX', kernel_size=2)
    with pytest.raises(NetspecError, match=r"num_output"):
        L.Convolution(data, num_output='many', kernel_size=1)
    with pytest.raises(NetspecError, match=r"did you mean 'MAX'"):
        P.Pooling.MAXX
    with pytest.raises(NetspecError, match=r"did you mean 'Pooling'"):
        P.Poolng
    with pytest.raises(NetspecError, match=r"bottom 0"):
        L.ReLU('data')
    n = NetSpec()
    n.conv1 = L.Convolution(data, num_output=1, kernel_size=1)
    with pytest.raises(NetspecError, match=r"did you mean 'conv1'"):
        n.conv2
    assert not hasattr(n, 'conv3')

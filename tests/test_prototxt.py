"""Text prototxt I/O: parsing, error messages, canonical formatting, atomic writes."""

import os

import pytest

from netspec import prototxt
from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

# Hand-written in the layout protobuf's text format prints (what pycaffe's
# str(net_param) shows): fields in field-number order, two-space indents.
CANONICAL_NET = '''name: "tiny"
force_backward: true
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 1
      dim: 3
      dim: 5
      dim: 5
    }
  }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  param {
    lr_mult: 1.0
    decay_mult: 1.0
  }
  param {
    lr_mult: 2.0
    decay_mult: 0.0
  }
  convolution_param {
    num_output: 4
    pad: 1
    kernel_size: 3
    weight_filler {
      type: "gaussian"
      std: 0.01
    }
  }
}
layer {
  name: "loss"
  type: "SoftmaxWithLoss"
  bottom: "conv1"
  bottom: "label"
  top: "loss"
  include {
    phase: TRAIN
  }
  loss_param {
    ignore_label: 255
    normalization: VALID
  }
}
'''

CANONICAL_SOLVER = '''train_net: "train.prototxt"
test_iter: 10
test_interval: 100
base_lr: 1e-10
display: 20
max_iter: 1000
lr_policy: "fixed"
momentum: 0.99
weight_decay: 0.0005
snapshot: 500
snapshot_prefix: "snapshot/train"
test_initialization: false
average_loss: 20
iter_size: 2
type: "SGD"
'''


def test_canonical_net_formats_byte_for_byte():
    net = prototxt.parse_net(CANONICAL_NET)
    assert prototxt.format_net(net) == CANONICAL_NET


def test_canonical_solver_formats_byte_for_byte():
    solver = prototxt.parse_solver(CANONICAL_SOLVER)
    assert solver.base_lr == pytest.approx(1e-10) and solver.iter_size == 2
    assert prototxt.format_solver(solver) == CANONICAL_SOLVER


def test_parsed_values_match_the_text():
    net = prototxt.parse_net(CANONICAL_NET)
    conv = net.layer[1]
    assert [layer.name for layer in net.layer] == ["data", "conv1", "loss"]
    assert list(conv.convolution_param.kernel_size) == [3]
    assert [p.lr_mult for p in conv.param] == [1.0, 2.0]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 5, 5]
    assert net.layer[2].include[0].phase == caffe_pb2.TRAIN
    assert net.layer[2].loss_param.ignore_label == 255


def test_round_trip_of_loose_text_gives_equal_message():
    loose = '''# comment
    name: 'x'  layer < name: "a" type: "Pooling" bottom: "b" top: "a"
      pooling_param: { pool: AVE kernel_size: 3 stride: 2 } >
    layer { name: "d" type: "Dropout" bottom: "a" top: "a" dropout_param { dropout_ratio: .25 } }
    '''
    net = prototxt.parse_net(loose)
    again = prototxt.parse_net(prototxt.format_net(net))
    assert again == net
    assert net.layer[0].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert net.layer[1].dropout_param.dropout_ratio == pytest.approx(0.25)


def test_read_and_write_files(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(CANONICAL_NET)
    net = prototxt.read_net(path)
    out = tmp_path / "copy.prototxt"
    prototxt.write_net(out, net)
    assert out.read_text() == CANONICAL_NET
    assert prototxt.read_net(str(out)) == net
    solver_path = tmp_path / "solver.prototxt"
    prototxt.write_solver(solver_path, prototxt.parse_solver(CANONICAL_SOLVER))
    assert prototxt.read_solver(solver_path) == prototxt.parse_solver(CANONICAL_SOLVER)


def test_parse_net_accepts_a_path_string(tmp_path):
    path = tmp_path / "n.prototxt"
    path.write_text('name: "p"\n')
    assert prototxt.parse_net(str(path)).name == "p"


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "net.prototxt"
    path.write_text("old contents")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        prototxt.write_net(path, prototxt.parse_net(CANONICAL_NET))
    monkeypatch.undo()
    assert path.read_text() == "old contents"
    assert os.listdir(tmp_path) == ["net.prototxt"]  # no temporary left behind
    prototxt.write_net(path, prototxt.parse_net(CANONICAL_NET))
    assert path.read_text() == CANONICAL_NET
    assert os.listdir(tmp_path) == ["net.prototxt"]


def error_of(text, path="train.prototxt"):
    with pytest.raises(NetspecError) as info:
        prototxt.parse_net(text, path=path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_field_names_line_column_and_hint():
    text = 'name: "x"\nlayer {\n  name: "c"\n  type: "Convolution"\n  convolution_param {\n' \
           '    num_output: 3\n    kernel_sise: 3\n  }\n}\n'
    # kernel_sise is on line 7, starting at column 5.
    assert error_of(text) == ('train.prototxt:7:5: ConvolutionParameter has no field '
                              '"kernel_sise" (did you mean "kernel_size"?)')


def test_unknown_top_level_field_without_close_match():
    assert error_of("zzz: 1\n") == 'train.prototxt:1:1: NetParameter has no field "zzz"'


def test_bad_enum_value():
    message = error_of('layer {\n  pooling_param { pool: MAXX }\n}\n')
    assert message == ('train.prototxt:2:25: PoolMethod has no value "MAXX" '
                       '(did you mean "MAX"?)')
    message = error_of('layer { include { phase: VALIDATE } }')
    assert message.startswith("train.prototxt:1:26: Phase has no value \"VALIDATE\"")
    assert "TRAIN" in message and "TEST" in message


def test_syntax_errors():
    assert error_of('layer { name: "a" } }') == \
        'train.prototxt:1:21: unexpected "}" (one "}" too many?)'
    assert error_of('layer {\n  name: "a"\n') .endswith(
        'the "{" opened on line 1 is never closed (add "}")')
    assert error_of('layer { bottom "a" }') == \
        'train.prototxt:1:16: expected ":" after the field name, got "a"'
    assert error_of('layer { name: conv1 }') == \
        'train.prototxt:1:15: expected a quoted string, got conv1 (write "conv1")'
    assert error_of('layer { convolution_param { num_output: 2.5 } }') == \
        'train.prototxt:1:41: expected an integer, got 2.5'
    assert error_of('layer { convolution_param { weight_filler: 3 } }') == \
        'train.prototxt:1:44: "weight_filler" is a message: write weight_filler { ... }'
    message = error_of('name: "a"\nname: "b"\n')
    assert message.startswith("train.prototxt:2:")  # protobuf points into line 2
    assert message.endswith(': "name" is given more than once in NetParameter; '
                            'it takes a single value')


def test_error_without_path_has_line_and_column():
    assert error_of("foo: 1", path=None) == '1:1: NetParameter has no field "foo"'


def test_missing_required_field():
    message = error_of('layer { name: "c" type: "Clip" clip_param { min: 0 } }')
    assert message == 'train.prototxt: missing required field layer "c": clip_param.max'


def test_missing_file():
    with pytest.raises(NetspecError, match=r"^/no/such/dir/net\.prototxt: no such file$"):
        prototxt.read_net("/no/such/dir/net.prototxt")
    with pytest.raises(NetspecError, match="no such file"):
        prototxt.read_solver("/no/such/solver.prototxt")


def test_binary_file_is_reported(tmp_path):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"\x0a\x03abc\xa2\x06\xff\xfe\x00")
    with pytest.raises(NetspecError, match="not a text file"):
        prototxt.read_net(path)


def test_solver_errors_name_the_solver_file(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nlr_polcy: "fixed"\n')
    with pytest.raises(NetspecError) as info:
        prototxt.read_solver(path)
    assert str(info.value) == (f'{path}:2:1: SolverParameter has no field "lr_polcy" '
                               '(did you mean "lr_policy"?)')

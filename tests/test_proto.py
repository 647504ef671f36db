"""The generated schema matches BVLC Caffe's field numbers, types and defaults."""

import pytest

from netspec.proto import caffe_pb2

def field(message, name):
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[name]


# (message, field, number) taken from BVLC src/caffe/proto/caffe.proto.
FIELD_NUMBERS = [
    ("BlobShape", "dim", 1),
    ("BlobProto", "num", 1), ("BlobProto", "channels", 2),
    ("BlobProto", "height", 3), ("BlobProto", "width", 4),
    ("BlobProto", "data", 5), ("BlobProto", "diff", 6),
    ("BlobProto", "shape", 7), ("BlobProto", "double_data", 8),
    ("BlobProto", "double_diff", 9),
    ("BlobProtoVector", "blobs", 1),
    ("Datum", "data", 4), ("Datum", "float_data", 6), ("Datum", "encoded", 7),
    ("FillerParameter", "variance_norm", 8), ("FillerParameter", "sparse", 7),
    ("NetParameter", "name", 1), ("NetParameter", "layers", 2),
    ("NetParameter", "input", 3), ("NetParameter", "input_dim", 4),
    ("NetParameter", "force_backward", 5), ("NetParameter", "state", 6),
    ("NetParameter", "debug_info", 7), ("NetParameter", "input_shape", 8),
    ("NetParameter", "layer", 100),
    ("SolverParameter", "train_net", 1), ("SolverParameter", "test_net", 2),
    ("SolverParameter", "test_iter", 3), ("SolverParameter", "base_lr", 5),
    ("SolverParameter", "lr_policy", 8), ("SolverParameter", "momentum", 11),
    ("SolverParameter", "weight_decay", 12), ("SolverParameter", "snapshot", 14),
    ("SolverParameter", "random_seed", 20), ("SolverParameter", "net", 24),
    ("SolverParameter", "net_param", 25), ("SolverParameter", "solver_type", 30),
    ("SolverParameter", "stepvalue", 34), ("SolverParameter", "clip_gradients", 35),
    ("SolverParameter", "iter_size", 36), ("SolverParameter", "type", 40),
    ("SolverParameter", "layer_wise_reduce", 41), ("SolverParameter", "weights", 42),
    ("SolverState", "iter", 1), ("SolverState", "learned_net", 2),
    ("SolverState", "history", 3), ("SolverState", "current_step", 4),
    ("NetState", "phase", 1), ("NetState", "stage", 3),
    ("NetStateRule", "not_stage", 5),
    ("ParamSpec", "name", 1), ("ParamSpec", "share_mode", 2),
    ("ParamSpec", "lr_mult", 3), ("ParamSpec", "decay_mult", 4),
    ("LayerParameter", "name", 1), ("LayerParameter", "type", 2),
    ("LayerParameter", "bottom", 3), ("LayerParameter", "top", 4),
    ("LayerParameter", "loss_weight", 5), ("LayerParameter", "param", 6),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "include", 8),
    ("LayerParameter", "exclude", 9), ("LayerParameter", "phase", 10),
    ("LayerParameter", "propagate_down", 11),
    ("LayerParameter", "transform_param", 100), ("LayerParameter", "loss_param", 101),
    ("LayerParameter", "accuracy_param", 102), ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "data_param", 107), ("LayerParameter", "dropout_param", 108),
    ("LayerParameter", "eltwise_param", 110), ("LayerParameter", "inner_product_param", 117),
    ("LayerParameter", "lrn_param", 118), ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "relu_param", 123), ("LayerParameter", "softmax_param", 125),
    ("LayerParameter", "window_data_param", 129), ("LayerParameter", "python_param", 130),
    ("LayerParameter", "prelu_param", 131), ("LayerParameter", "spp_param", 132),
    ("LayerParameter", "reshape_param", 133), ("LayerParameter", "log_param", 134),
    ("LayerParameter", "flatten_param", 135), ("LayerParameter", "reduction_param", 136),
    ("LayerParameter", "embed_param", 137), ("LayerParameter", "tile_param", 138),
    ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "elu_param", 140),
    ("LayerParameter", "bias_param", 141), ("LayerParameter", "scale_param", 142),
    ("LayerParameter", "input_param", 143), ("LayerParameter", "crop_param", 144),
    ("LayerParameter", "parameter_param", 145), ("LayerParameter", "recurrent_param", 146),
    ("LayerParameter", "swish_param", 147), ("LayerParameter", "clip_param", 148),
    ("ConvolutionParameter", "num_output", 1), ("ConvolutionParameter", "kernel_size", 4),
    ("ConvolutionParameter", "stride", 6), ("ConvolutionParameter", "group", 5),
    ("ConvolutionParameter", "engine", 15), ("ConvolutionParameter", "dilation", 18),
    ("PoolingParameter", "pool", 1), ("PoolingParameter", "kernel_size", 2),
    ("PoolingParameter", "stride", 3), ("PoolingParameter", "pad", 4),
    ("PoolingParameter", "global_pooling", 12), ("PoolingParameter", "round_mode", 13),
    ("CropParameter", "axis", 1), ("CropParameter", "offset", 2),
    ("TransformationParameter", "mean_value", 5), ("TransformationParameter", "force_gray", 7),
    ("LossParameter", "ignore_label", 1), ("LossParameter", "normalize", 2),
    ("LossParameter", "normalization", 3),
    ("PythonParameter", "module", 1), ("PythonParameter", "layer", 2),
    ("PythonParameter", "param_str", 3), ("PythonParameter", "share_in_parallel", 4),
    ("V1LayerParameter", "layer", 1), ("V1LayerParameter", "bottom", 2),
    ("V1LayerParameter", "top", 3), ("V1LayerParameter", "name", 4),
    ("V1LayerParameter", "type", 5), ("V1LayerParameter", "blobs", 6),
    ("V1LayerParameter", "blobs_lr", 7), ("V1LayerParameter", "weight_decay", 8),
    ("V1LayerParameter", "convolution_param", 10), ("V1LayerParameter", "include", 32),
    ("V1LayerParameter", "transform_param", 36), ("V1LayerParameter", "loss_param", 42),
    ("V1LayerParameter", "param", 1001), ("V1LayerParameter", "blob_share_mode", 1002),
    ("V0LayerParameter", "kernelsize", 8), ("V0LayerParameter", "blobs", 50),
    ("V0LayerParameter", "blobs_lr", 51), ("V0LayerParameter", "weight_decay", 52),
    ("V0LayerParameter", "det_crop_mode", 59), ("V0LayerParameter", "concat_dim", 65),
    ("V0LayerParameter", "hdf5_output_param", 1001),
]


@pytest.mark.parametrize("message,name,number", FIELD_NUMBERS)
def test_field_numbers(message, name, number):
    assert field(message, name).number == number


# (message, field, default) from BVLC.
DEFAULTS = [
    ("FillerParameter", "type", "constant"), ("FillerParameter", "std", 1.0),
    ("FillerParameter", "sparse", -1),
    ("SolverParameter", "type", "SGD"), ("SolverParameter", "regularization_type", "L2"),
    ("SolverParameter", "clip_gradients", -1.0), ("SolverParameter", "iter_size", 1),
    ("SolverParameter", "average_loss", 1), ("SolverParameter", "test_initialization", True),
    ("SolverParameter", "random_seed", -1), ("SolverParameter", "snapshot_after_train", True),
    ("NetState", "phase", caffe_pb2.TEST),
    ("ParamSpec", "lr_mult", 1.0), ("ParamSpec", "decay_mult", 1.0),
    ("ConvolutionParameter", "bias_term", True), ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "axis", 1),
    ("PoolingParameter", "stride", 1), ("PoolingParameter", "round_mode",
                                        caffe_pb2.PoolingParameter.CEIL),
    ("CropParameter", "axis", 2), ("DropoutParameter", "dropout_ratio", 0.5),
    ("LRNParameter", "local_size", 5), ("LRNParameter", "beta", 0.75),
    ("LossParameter", "normalization", caffe_pb2.LossParameter.VALID),
    ("BatchNormParameter", "eps", pytest.approx(1e-5)),
    ("BatchNormParameter", "moving_average_fraction", pytest.approx(0.999)),
    ("EltwiseParameter", "operation", caffe_pb2.EltwiseParameter.SUM),
    ("ImageDataParameter", "batch_size", 1), ("DataParameter", "prefetch", 4),
    ("WindowDataParameter", "crop_mode", "warp"), ("V0LayerParameter", "biasterm", True),
    ("ReshapeParameter", "num_axes", -1), ("FlattenParameter", "end_axis", -1),
    ("SwishParameter", "beta", 1.0), ("ScaleParameter", "bias_term", False),
]


@pytest.mark.parametrize("message,name,default", DEFAULTS)
def test_defaults(message, name, default):
    assert getattr(getattr(caffe_pb2, message)(), name) == default


def test_enum_values():
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    v1 = caffe_pb2.V1LayerParameter
    expected = {"NONE": 0, "ACCURACY": 1, "CONVOLUTION": 4, "DATA": 5, "DROPOUT": 6,
                "INNER_PRODUCT": 14, "LRN": 15, "POOLING": 17, "RELU": 18,
                "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "ELTWISE": 25,
                "ARGMAX": 30, "DUMMY_DATA": 32, "SLICE": 33, "ABSVAL": 35,
                "SILENCE": 36, "CONTRASTIVE_LOSS": 37, "EXP": 38, "DECONVOLUTION": 39}
    for name, number in expected.items():
        assert v1.LayerType.Value(name) == number
    assert len(v1.LayerType.keys()) == 40
    solver = caffe_pb2.SolverParameter
    assert [solver.SolverType.Value(n) for n in
            ("SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM")] == list(range(6))
    assert caffe_pb2.LossParameter.NormalizationMode.Value("NONE") == 3
    assert caffe_pb2.HingeLossParameter.Norm.Value("L1") == 1
    assert caffe_pb2.ReductionParameter.ReductionOp.Value("MEAN") == 4
    assert caffe_pb2.PoolingParameter.RoundMode.Value("FLOOR") == 1


def test_packed_blob_data_wire_format():
    # data = 5 packed float: tag (5 << 3 | 2) = 0x2a, byte length, little-endian floats.
    blob = caffe_pb2.BlobProto(data=[1.0, -2.0])
    assert blob.SerializeToString() == b"\x2a\x08" + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0"
    # shape = 7 (tag 0x3a) holding dim = 1 packed int64 (tag 0x0a).
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 3]))
    assert blob.SerializeToString() == b"\x3a\x04\x0a\x02\x02\x03"


def test_clip_parameter_fields_are_required():
    assert field("ClipParameter", "min").is_required
    assert not caffe_pb2.ClipParameter(min=0.0).IsInitialized()


def test_field_types_and_packing():
    fd = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"]
    assert fd.type == fd.TYPE_FLOAT and fd.is_packed and fd.is_repeated
    assert field("BlobProto", "double_data").type == fd.TYPE_DOUBLE
    assert field("BlobShape", "dim").type == fd.TYPE_INT64
    assert field("BlobProto", "num").type == fd.TYPE_INT32
    assert field("SolverParameter", "random_seed").type == fd.TYPE_INT64
    assert field("ConvolutionParameter", "kernel_size").type == fd.TYPE_UINT32
    assert field("ConvolutionParameter", "kernel_size").is_repeated
    assert not field("PoolingParameter", "kernel_size").is_repeated
    assert field("V1LayerParameter", "type").enum_type.name == "LayerType"
    assert field("LayerParameter", "type").type == fd.TYPE_STRING

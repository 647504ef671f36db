"""Legacy net and solver upgrades, applied on load as Caffe does.

Follows the behaviour of Caffe's ``UpgradeNetAsNeeded`` and
``UpgradeSolverAsNeeded`` (src/caffe/util/upgrade_proto.cpp), in its order:

1. V0 -> V1: ``layers { layer { type: "conv" ... } }`` into V1 layers with
   enum types and ``*_param`` messages; "padding" layers folded into the
   convolution / pooling they feed.
2. Data transformation: ``scale``/``mean_file``/``crop_size``/``mirror`` of
   V1 data layers moved into ``transform_param``.
3. V1 -> V2: ``layers`` (enum type, ``blobs_lr``, ``weight_decay``, ``param``
   names) into ``layer`` (string type, ``param { lr_mult decay_mult }``).
4. Net inputs: top-level ``input`` + ``input_shape``/``input_dim`` into an
   ``Input`` layer placed first.
5. BatchNorm with three ParamSpecs: their lr_mult / decay_mult set to 0.

Where Caffe logs an incompatibility and continues, we log a warning and
continue; where Caffe aborts, we raise ``NetspecError``.
"""

import logging

from netspec.errors import NetspecError
from netspec.proto import caffe_pb2

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter

# V1 enum type -> V2 type string.
V1_TYPE_NAMES = {
    V1.NONE: "",
    V1.ABSVAL: "AbsVal",
    V1.ACCURACY: "Accuracy",
    V1.ARGMAX: "ArgMax",
    V1.BNLL: "BNLL",
    V1.CONCAT: "Concat",
    V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    V1.CONVOLUTION: "Convolution",
    V1.DECONVOLUTION: "Deconvolution",
    V1.DATA: "Data",
    V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp",
    V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data",
    V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss",
    V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss",
    V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData",
    V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN",
    V1.POOLING: "Pooling",
    V1.POWER: "Power",
    V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence",
    V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split",
    V1.SLICE: "Slice",
    V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

# V0 type string -> V1 enum type.
V0_TYPES = {
    "accuracy": V1.ACCURACY,
    "bnll": V1.BNLL,
    "concat": V1.CONCAT,
    "conv": V1.CONVOLUTION,
    "data": V1.DATA,
    "dropout": V1.DROPOUT,
    "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA,
    "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL,
    "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT,
    "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS,
    "pool": V1.POOLING,
    "relu": V1.RELU,
    "sigmoid": V1.SIGMOID,
    "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS,
    "split": V1.SPLIT,
    "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# Where each V0 field goes: {V0 field: {V0 type: (V1 message field, field)}}.
# The key "*" means: for every layer type.
_CONV, _IP, _POOL = "convolution_param", "inner_product_param", "pooling_param"
_DATA, _HDF5, _IMAGES = "data_param", "hdf5_data_param", "image_data_param"
_WINDOW, _TRANSFORM = "window_data_param", "transform_param"
V0_FIELD_TARGETS = {
    "num_output": {"conv": (_CONV, "num_output"), "innerproduct": (_IP, "num_output")},
    "biasterm": {"conv": (_CONV, "bias_term"), "innerproduct": (_IP, "bias_term")},
    "weight_filler": {"conv": (_CONV, "weight_filler"), "innerproduct": (_IP, "weight_filler")},
    "bias_filler": {"conv": (_CONV, "bias_filler"), "innerproduct": (_IP, "bias_filler")},
    "pad": {"conv": (_CONV, "pad"), "pool": (_POOL, "pad")},
    "kernelsize": {"conv": (_CONV, "kernel_size"), "pool": (_POOL, "kernel_size")},
    "group": {"conv": (_CONV, "group")},
    "stride": {"conv": (_CONV, "stride"), "pool": (_POOL, "stride")},
    "pool": {"pool": (_POOL, "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": (_DATA, "source"), "hdf5_data": (_HDF5, "source"),
               "images": (_IMAGES, "source"), "window_data": (_WINDOW, "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": {"*": (_TRANSFORM, "scale")},
    "meanfile": {"*": (_TRANSFORM, "mean_file")},
    "batchsize": {"data": (_DATA, "batch_size"), "hdf5_data": (_HDF5, "batch_size"),
                  "images": (_IMAGES, "batch_size"), "window_data": (_WINDOW, "batch_size")},
    "cropsize": {"*": (_TRANSFORM, "crop_size")},
    "mirror": {"*": (_TRANSFORM, "mirror")},
    "rand_skip": {"data": (_DATA, "rand_skip"), "images": (_IMAGES, "rand_skip")},
    "shuffle_images": {"images": (_IMAGES, "shuffle")},
    "new_height": {"images": (_IMAGES, "new_height")},
    "new_width": {"images": (_IMAGES, "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": (_WINDOW, "fg_threshold")},
    "det_bg_threshold": {"window_data": (_WINDOW, "bg_threshold")},
    "det_fg_fraction": {"window_data": (_WINDOW, "fg_fraction")},
    "det_context_pad": {"window_data": (_WINDOW, "context_pad")},
    "det_crop_mode": {"window_data": (_WINDOW, "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}

# V1 data layer types whose *_param held the transformation fields.
_DATA_LAYER_PARAMS = {V1.DATA: _DATA, V1.IMAGE_DATA: _IMAGES, V1.WINDOW_DATA: _WINDOW}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def _prefix(path):
    return f"{path}: " if path else ""


# --------------------------------------------------------------------------
# Public API


def net_needs_upgrade(net):
    """True when ``upgrade_net`` would change ``net``."""
    return (_needs_v0_to_v1(net) or _needs_data_upgrade(net) or _needs_v1_to_v2(net)
            or _needs_input_upgrade(net) or _needs_batchnorm_upgrade(net))


def upgrade_net(net, path=None):
    """Return an upgraded copy of the NetParameter ``net`` (``net`` is unchanged).

    ``path`` names the source in errors and warnings.
    """
    if len(net.layer) and len(net.layers):
        raise NetspecError(f"{_prefix(path)}uses both 'layer' and 'layers' (V1); "
                           "write all layers in one form")
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    if _needs_v0_to_v1(upgraded):
        upgraded = _upgrade_v0_net(upgraded, path)
    if _needs_data_upgrade(upgraded):
        _upgrade_data_transformation(upgraded)
    if _needs_v1_to_v2(upgraded):
        upgraded = _upgrade_v1_net(upgraded)
    if _needs_input_upgrade(upgraded):
        _upgrade_input(upgraded, path)
    if _needs_batchnorm_upgrade(upgraded):
        _upgrade_batchnorm(upgraded)
    return upgraded


def solver_needs_upgrade(solver):
    """True when the solver uses the deprecated ``solver_type`` enum."""
    return solver.HasField("solver_type")


def upgrade_solver(solver, path=None):
    """Return a copy of ``solver`` with ``solver_type`` (enum) turned into ``type``.

    Both fields set with different solvers is a ``NetspecError``.
    """
    upgraded = caffe_pb2.SolverParameter()
    upgraded.CopyFrom(solver)
    if not solver_needs_upgrade(upgraded):
        return upgraded
    enum_name = caffe_pb2.SolverParameter.SolverType.Name(upgraded.solver_type)
    type_name = SOLVER_TYPE_NAMES[upgraded.solver_type]
    if upgraded.HasField("type") and upgraded.type != type_name:
        raise NetspecError(
            f'{_prefix(path)}solver_type: {enum_name} and type: "{upgraded.type}" '
            f'disagree; keep only type (solver_type is deprecated)')
    upgraded.type = type_name
    upgraded.ClearField("solver_type")
    return upgraded


# --------------------------------------------------------------------------
# V0 -> V1


def _needs_v0_to_v1(net):
    return any(layer.HasField("layer") for layer in net.layers)


def _upgrade_v0_net(net, path):
    """V0 net (V1 connections wrapping V0 layers) into a V1 net."""
    padded = _fold_v0_padding_layers(net, path)
    upgraded = caffe_pb2.NetParameter()
    if padded.HasField("name"):
        upgraded.name = padded.name
    for connection in padded.layers:
        _upgrade_v0_layer(connection, upgraded.layers.add(), path)
    upgraded.input.extend(padded.input)
    upgraded.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        upgraded.force_backward = padded.force_backward
    return upgraded


def _fold_v0_padding_layers(net, path):
    """Drop V0 "padding" layers, giving their pad to the conv / pool they feed."""
    folded = caffe_pb2.NetParameter()
    folded.CopyFrom(net)
    del folded.layers[:]
    last_producer = {name: -1 for name in net.input}  # blob -> layer index
    for index, connection in enumerate(net.layers):
        v0_layer = connection.layer
        if v0_layer.type != "padding":
            folded.layers.add().CopyFrom(connection)
        for bottom_index, blob in enumerate(connection.bottom):
            if blob not in last_producer:
                raise NetspecError(f'{_prefix(path)}layer "{v0_layer.name}": unknown '
                                   f'bottom blob "{blob}" (no earlier layer or input '
                                   "produces it)")
            source_index = last_producer[blob]
            if source_index == -1:
                continue
            source = net.layers[source_index]
            if source.layer.type != "padding":
                continue
            _check_padding_use(v0_layer, connection, source, path)
            target = folded.layers[-1]
            target.layer.pad = source.layer.pad
            target.bottom[bottom_index] = source.bottom[0]
        for blob in connection.top:
            last_producer[blob] = index
    return folded


def _check_padding_use(v0_layer, connection, padding, path):
    name = f'{_prefix(path)}layer "{v0_layer.name}"'
    if v0_layer.type not in ("conv", "pool"):
        raise NetspecError(f'{name}: a padding layer can only feed a conv or pool '
                           f'layer, not "{v0_layer.type}"')
    if len(connection.bottom) != 1:
        raise NetspecError(f"{name}: a layer fed by a padding layer takes one bottom")
    if len(padding.bottom) != 1 or len(padding.top) != 1:
        raise NetspecError(f'{_prefix(path)}padding layer "{padding.layer.name}" '
                           "must have one bottom and one top")


def _upgrade_v0_layer(connection, v1_layer, path):
    """Fill the V1 layer ``v1_layer`` from a V0 connection; returns True if lossless."""
    v1_layer.bottom.extend(connection.bottom)
    v1_layer.top.extend(connection.top)
    if not connection.HasField("layer"):
        return True
    v0_layer = connection.layer
    if v0_layer.HasField("name"):
        v1_layer.name = v0_layer.name
    layer_type = v0_layer.type
    if v0_layer.HasField("type"):
        if layer_type not in V0_TYPES:
            raise NetspecError(f'{_prefix(path)}layer "{v0_layer.name}": unknown V0 '
                               f'layer type "{layer_type}"')
        v1_layer.type = V0_TYPES[layer_type]
    for blob in v0_layer.blobs:
        v1_layer.blobs.add().CopyFrom(blob)
    v1_layer.blobs_lr.extend(v0_layer.blobs_lr)
    v1_layer.weight_decay.extend(v0_layer.weight_decay)
    lossless = True
    for field, value in v0_layer.ListFields():
        targets = V0_FIELD_TARGETS.get(field.name)
        if targets is None:
            continue
        target = targets.get(layer_type) or targets.get("*")
        if target is None:
            log.warning('%slayer "%s": V0 field "%s" does not apply to type "%s"; '
                        "dropped", _prefix(path), v0_layer.name, field.name, layer_type)
            lossless = False
            continue
        _set_field(v1_layer, target, value)
    return lossless


def _set_field(v1_layer, target, value):
    """Set ``v1_layer.<param>.<field>`` (or the whole ``<param>``) to ``value``."""
    param_name, field_name = target
    param = getattr(v1_layer, param_name)
    if field_name is None:
        param.CopyFrom(value)
        return
    descriptor = param.DESCRIPTOR.fields_by_name[field_name]
    if descriptor.is_repeated:
        getattr(param, field_name).append(value)
    elif descriptor.message_type is not None:
        getattr(param, field_name).CopyFrom(value)
    else:
        setattr(param, field_name, value)


# --------------------------------------------------------------------------
# Data transformation fields


def _needs_data_upgrade(net):
    for layer in net.layers:
        param_name = _DATA_LAYER_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        if any(param.HasField(name) for name in _TRANSFORM_FIELDS):
            return True
    return False


def _upgrade_data_transformation(net):
    for layer in net.layers:
        param_name = _DATA_LAYER_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        # Caffe touches both messages here, so they are present even if empty.
        param.SetInParent()
        layer.transform_param.SetInParent()
        for name in _TRANSFORM_FIELDS:
            if param.HasField(name):
                setattr(layer.transform_param, name, getattr(param, name))
                param.ClearField(name)


# --------------------------------------------------------------------------
# V1 -> V2


def _needs_v1_to_v2(net):
    return len(net.layers) > 0


def _upgrade_v1_net(net):
    upgraded = caffe_pb2.NetParameter()
    upgraded.CopyFrom(net)
    del upgraded.layers[:]
    del upgraded.layer[:]
    for v1_layer in net.layers:
        _upgrade_v1_layer(v1_layer, upgraded.layer.add())
    return upgraded


def _param_spec(layer, index):
    """The ParamSpec ``layer.param[index]``, adding empty ones as needed."""
    while len(layer.param) <= index:
        layer.param.add()
    return layer.param[index]


def _upgrade_v1_layer(v1_layer, layer):
    layer.bottom.extend(v1_layer.bottom)
    layer.top.extend(v1_layer.top)
    if v1_layer.HasField("name"):
        layer.name = v1_layer.name
    for rule in v1_layer.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1_layer.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1_layer.HasField("type"):
        layer.type = V1_TYPE_NAMES[v1_layer.type]
    for blob in v1_layer.blobs:
        layer.blobs.add().CopyFrom(blob)
    for index, name in enumerate(v1_layer.param):
        _param_spec(layer, index).name = name
    for index, mode in enumerate(v1_layer.blob_share_mode):
        # V1 and ParamSpec DimCheckMode share their numbering.
        _param_spec(layer, index).share_mode = mode
    for index, lr_mult in enumerate(v1_layer.blobs_lr):
        _param_spec(layer, index).lr_mult = lr_mult
    for index, decay_mult in enumerate(v1_layer.weight_decay):
        _param_spec(layer, index).decay_mult = decay_mult
    layer.loss_weight.extend(v1_layer.loss_weight)
    # Every V1 *_param has a LayerParameter field of the same name.
    for field, value in v1_layer.ListFields():
        if field.name.endswith("_param"):
            getattr(layer, field.name).CopyFrom(value)
    if v1_layer.HasField("layer"):
        log.warning('layer "%s": V0 content inside a V1 layer is ignored', v1_layer.name)


# --------------------------------------------------------------------------
# Net inputs -> Input layer


def _needs_input_upgrade(net):
    return len(net.input) > 0


def _upgrade_input(net, path):
    has_shape = len(net.input_shape) > 0
    has_dim = len(net.input_dim) > 0
    if has_shape or has_dim:
        _check_input_shapes(net, has_shape, path)
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for index, blob in enumerate(net.input):
            layer.top.append(blob)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[index])
            else:
                shape.dim.extend(net.input_dim[4 * index:4 * index + 4])
        layers = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        net.layer.extend(layers)
    # Without any shape (old caffemodels) the inputs are simply dropped.
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _check_input_shapes(net, has_shape, path):
    count = len(net.input)
    if has_shape and len(net.input_shape) < count:
        raise NetspecError(f"{_prefix(path)}{count} inputs but {len(net.input_shape)} "
                           "input_shape entries; give one input_shape per input")
    if not has_shape and len(net.input_dim) < 4 * count:
        raise NetspecError(f"{_prefix(path)}{count} inputs need {4 * count} input_dim "
                           f"values (N, C, H, W each), found {len(net.input_dim)}")


# --------------------------------------------------------------------------
# BatchNorm with explicit ParamSpecs


def _is_old_batchnorm(layer):
    return layer.type == "BatchNorm" and len(layer.param) == 3


def _needs_batchnorm_upgrade(net):
    for layer in net.layer:
        if _is_old_batchnorm(layer) and not all(
                spec.HasField("lr_mult") and spec.lr_mult == 0
                and spec.HasField("decay_mult") and spec.decay_mult == 0
                for spec in layer.param):
            return True
    return False


def _upgrade_batchnorm(net):
    """The statistics blobs are not learned: zero their lr and decay multipliers."""
    for layer in net.layer:
        if _is_old_batchnorm(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0

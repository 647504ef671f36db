"""Write nets in Python: the ``caffe.net_spec`` DSL, on netspec's own schema.

    from netspec.net_spec import layers as L, params as P, NetSpec

    n = NetSpec()
    n.data, n.label = L.Python(module='voc_layers', layer='VOCSegDataLayer',
                               ntop=2, param_str=str(dict(split='val')))
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=64, pad=1,
                            weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    net = n.to_proto()          # a caffe_pb2.NetParameter

``L.<Type>(*bottoms, **kwargs)`` makes a layer of that type.  A keyword is
looked up in the schema: one ending in ``param`` (``param``,
``convolution_param``, ``loss_param``, ...) is a field of LayerParameter;
any other goes to the type's own ``<type>_param`` message when it has that
field, then to ``loss_param`` (``*Loss`` types) or ``transform_param``
(``*Data`` types), then to LayerParameter itself (``name``, ``loss_weight``,
``include``, ...).  Lists fill repeated fields, dicts fill messages.
``ntop`` sets the number of tops and ``in_place=True`` writes the output
over the first bottom.  Tops assigned to a NetSpec are named after the
attribute; the others get ``<Type><count>`` names, as pycaffe does.
"""
import difflib
import os
import sys
from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor

from netspec.errors import NetspecError, where
from netspec.proto import caffe_pb2

# Types whose settings live in another type's message (as in Caffe's C++ layers).
_SHARED_MESSAGE = {
    'Deconvolution': 'Convolution',
    'Im2col': 'Convolution',
    'SoftmaxWithLoss': 'Softmax',
    'RNN': 'Recurrent',
    'LSTM': 'Recurrent',
}
_DSL_KEYWORDS = ('ntop', 'in_place')


def _type_to_param_field():
    """Map a type name (message name less ``Parameter``) to its LayerParameter field."""
    mapping = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith('_param') and message and message.name.endswith('Parameter'):
            mapping[message.name[:-len('Parameter')]] = field.name
    return mapping


_PARAM_FIELD_OF_TYPE = _type_to_param_field()


def param_field_of(type_name):
    """The LayerParameter field holding a type's settings, or None (e.g. ReLU -> relu_param)."""
    return _PARAM_FIELD_OF_TYPE.get(_SHARED_MESSAGE.get(type_name, type_name))


def _fallback_fields(type_name):
    """Shared messages a type reads besides its own one."""
    if type_name.endswith('Loss'):
        return ['loss_param']
    if type_name.endswith('Data'):
        return ['transform_param']
    return []


def _caller_location():
    """``file:line`` of the first frame outside netspec's DSL modules, for error messages."""
    frame = sys._getframe(1)
    here = os.path.dirname(os.path.abspath(__file__))
    dsl_files = {os.path.join(here, 'net_spec.py'), os.path.join(here, 'coord_map.py')}
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in dsl_files:
        frame = frame.f_back
    if frame is None:
        return ''
    return where(frame.f_code.co_filename, frame.f_lineno) + ': '


def _did_you_mean(word, candidates):
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _as_python_scalar(value):
    """NumPy scalars (e.g. computed crop offsets) as plain Python numbers."""
    if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _scalar_for(field, value, label):
    value = _as_python_scalar(value)
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        enum_value = field.enum_type.values_by_name.get(value)
        if enum_value is None:
            names = [v.name for v in field.enum_type.values]
            raise NetspecError(f"{label}: '{value}' is not one of {', '.join(names)}"
                               + _did_you_mean(value, names))
        return enum_value.number
    return value


def _assign(message, key, value, label):
    """Set ``message.key`` from a Python value: lists -> repeated, dicts -> messages."""
    field = message.DESCRIPTOR.fields_by_name.get(key)
    label = f'{label}.{key}' if label else key
    if field is None:
        names = message.DESCRIPTOR.fields_by_name.keys()
        raise NetspecError(f"{message.DESCRIPTOR.name} has no field '{key}' (at {label})"
                           + _did_you_mean(key, names))
    try:
        if field.is_repeated:
            items = value if isinstance(value, (list, tuple)) else [value]
            container = getattr(message, key)
            for item in items:
                if field.message_type is not None:
                    _fill_message(container.add(), item, label)
                else:
                    container.append(_scalar_for(field, item, label))
        elif field.message_type is not None:
            _fill_message(getattr(message, key), value, label)
        else:
            if isinstance(value, (list, tuple)):
                raise NetspecError(f'{label} takes one value, not a list')
            setattr(message, key, _scalar_for(field, value, label))
    except (TypeError, ValueError) as error:
        raise NetspecError(f'{label} = {value!r}: {error}') from None


def _fill_message(message, value, label):
    """Fill a sub-message from a dict (or copy a message of the same type)."""
    if isinstance(value, dict):
        message.SetInParent()
        for key, item in value.items():
            _assign(message, key, item, label)
    elif hasattr(value, 'DESCRIPTOR') and value.DESCRIPTOR is message.DESCRIPTOR:
        message.CopyFrom(value)
    else:
        raise NetspecError(f'{label} is a {message.DESCRIPTOR.name} message: give a dict, '
                           f'not {value!r}')


def _route(type_name, key):
    """The LayerParameter field a keyword belongs to ('' for LayerParameter itself), or None."""
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    if key.endswith('param'):
        return '' if key in layer_fields else None
    for field_name in [param_field_of(type_name)] + _fallback_fields(type_name):
        if field_name and key in layer_fields[field_name].message_type.fields_by_name:
            return field_name
    return '' if key in layer_fields else None


def _routable_keys(type_name):
    """Every keyword a type accepts, for did-you-mean suggestions."""
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    keys = set(layer_fields) | set(_DSL_KEYWORDS)
    for field_name in [param_field_of(type_name)] + _fallback_fields(type_name):
        if field_name:
            keys |= set(layer_fields[field_name].message_type.fields_by_name)
    return keys


def _unknown_keyword_message(type_name, key):
    text = f"{type_name} layer: unknown parameter '{key}'"
    hint = _did_you_mean(key, _routable_keys(type_name))
    if not hint and param_field_of(type_name) is None:
        known_types = list(_PARAM_FIELD_OF_TYPE) + list(_SHARED_MESSAGE)
        type_hint = _did_you_mean(type_name, known_types)
        if type_hint:
            hint = f' (is the type right?{type_hint[1:]})'
    return text + hint


def layer_settings(type_name, params):
    """A LayerParameter holding only the settings given as keywords (no name/bottom/top)."""
    layer = caffe_pb2.LayerParameter()
    layer.type = type_name
    for key, value in params.items():
        field_name = _route(type_name, key)
        if field_name is None:
            raise NetspecError(_unknown_keyword_message(type_name, key))
        target = getattr(layer, field_name) if field_name else layer
        try:
            _assign(target, key, value, field_name)
        except NetspecError as error:
            raise NetspecError(f'{type_name} layer: {error}') from None
    return layer


class Top:
    """One output blob of a layer (the ``n``-th top of ``fn``)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def __repr__(self):
        return f'<Top {self.n} of {self.fn.type_name}>'


class Function:
    """A layer: its type, its input Tops and its keyword settings."""

    def __init__(self, type_name, inputs, params):
        location = _caller_location()
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise NetspecError(f'{location}{type_name} layer: bottom {index} is '
                                   f'{bottom!r}, not a top made by another layer')
        params = dict(params)
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.ntop = params.pop('ntop', 1)
        self.in_place = params.pop('in_place', False)
        if self.in_place and not self.inputs:
            raise NetspecError(f'{location}{type_name} layer: in_place=True needs a bottom')
        self.params = params
        try:
            self.settings = layer_settings(type_name, params)
        except NetspecError as error:
            raise NetspecError(location + str(error)) from None
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def update(self, params):
        """Add or change settings (pycaffe's ``NetSpec.update``)."""
        merged = dict(self.params, **params)
        self.settings = layer_settings(self.type_name, merged)
        self.params = merged

    def __repr__(self):
        return f'<Function {self.type_name}>'


class _NetBuilder:
    """Turns a graph of Functions into LayerParameters, inputs first."""

    def __init__(self, names):
        self.names = dict(names)     # Top or Function -> name
        self.autonames = Counter()
        self.layers = OrderedDict()  # Function -> LayerParameter

    def auto_name(self, type_name):
        self.autonames[type_name] += 1
        return f'{type_name}{self.autonames[type_name]}'

    def top_name(self, top):
        if top not in self.names:
            self.names[top] = self.auto_name(top.fn.type_name)
        return self.names[top]

    def layer_name(self, fn):
        if fn not in self.names:
            self.names[fn] = self.top_name(fn.tops[0]) if fn.tops else self.auto_name(fn.type_name)
        return self.names[fn]

    def add(self, fn):
        if fn in self.layers:
            return
        for bottom in fn.inputs:
            self.add(bottom.fn)
        layer = caffe_pb2.LayerParameter()
        layer.type = fn.type_name
        layer.bottom.extend(self.layers[b.fn].top[b.n] for b in fn.inputs)
        if fn.in_place:
            layer.top.append(layer.bottom[0])
        else:
            layer.top.extend(self.top_name(top) for top in fn.tops)
        layer.name = self.layer_name(fn)
        layer.MergeFrom(fn.settings)
        self.layers[fn] = layer

    def net(self):
        net = caffe_pb2.NetParameter()
        net.layer.extend(self.layers.values())
        return net


def _function_of(value, name=None):
    if isinstance(value, Top):
        return value.fn
    if isinstance(value, Function):
        return value
    label = f"'{name}' is " if name else ''
    raise NetspecError(f'{label}{value!r}: expected a top (or a layer with ntop=0)')


def to_proto(*tops):
    """A NetParameter with every layer needed to compute the given tops (auto names)."""
    builder = _NetBuilder({})
    for top in tops:
        builder.add(_function_of(top))
    return builder.net()


class NetSpec:
    """Tops assigned as attributes (or items) are named by them; ``to_proto()`` builds the net."""

    def __init__(self):
        super().__setattr__('_tops', OrderedDict())

    def __setattr__(self, name, value):
        _function_of(value, name)
        self._tops[name] = value

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        try:
            return self._tops[name]
        except KeyError:
            raise _MissingTop(f"NetSpec has no top '{name}'"
                              + _did_you_mean(name, self._tops)) from None

    __setitem__ = __setattr__
    __getitem__ = __getattr__

    def __contains__(self, name):
        return name in self._tops

    def keys(self):
        return list(self._tops)

    def vals(self):
        return list(self._tops.values())

    def update(self, name, params):
        _function_of(self[name]).update(params)

    def to_proto(self):
        builder = _NetBuilder({top: name for name, top in self._tops.items()})
        for top in self._tops.values():
            builder.add(_function_of(top))
        return builder.net()


class _MissingTop(NetspecError, AttributeError):
    """A NetSpec lookup of a name never assigned (also an AttributeError, for hasattr)."""


class Layers:
    """``L.<Type>(*bottoms, **settings)``: a Top, a tuple of Tops (ntop > 1),
    or the layer itself (ntop=0)."""

    def __getattr__(self, type_name):
        if type_name.startswith('__'):
            raise AttributeError(type_name)

        def make_layer(*bottoms, **settings):
            fn = Function(type_name, bottoms, settings)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        make_layer.__name__ = type_name
        return make_layer


class _EnumValues:
    """The values of the enums of one message: ``P.Pooling.MAX``."""

    def __init__(self, label, values):
        self._label = label
        self._values = values

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        if name not in self._values:
            raise NetspecError(f"{self._label} has no value '{name}'"
                               + _did_you_mean(name, self._values))
        return self._values[name]


def _enum_values(descriptors):
    return {value.name: value.number for enum in descriptors for value in enum.values}


class Parameters:
    """``P.<Message less 'Parameter'>.<VALUE>``, e.g. ``P.Pooling.MAX``, ``P.Eltwise.SUM``,
    ``P.Loss.VALID``; top-level enums by their own name, e.g. ``P.Phase.TEST``."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        messages = caffe_pb2.DESCRIPTOR.message_types_by_name
        enums = caffe_pb2.DESCRIPTOR.enum_types_by_name
        message = messages.get(name + 'Parameter') or messages.get(name)
        if message is not None:
            return _EnumValues(message.name, _enum_values(message.enum_types))
        if name in enums:
            return _EnumValues(name, _enum_values([enums[name]]))
        known = [m[:-len('Parameter')] for m in messages if m.endswith('Parameter')]
        raise NetspecError(f"no parameter message '{name}Parameter' in caffe.proto"
                           + _did_you_mean(name, known + list(enums)))


def prototxt_text(net):
    """The prototxt text of a NetParameter (what pycaffe's ``str(net.to_proto())`` gives)."""
    from netspec.prototxt import format_net
    return format_net(net)


layers = Layers()
params = Parameters()

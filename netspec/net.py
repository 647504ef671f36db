"""``netspec.Net``: pycaffe's stateful ``caffe.Net`` over the pure compiler.

Scripts written for pycaffe port by changing the import::

    import netspec as caffe
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["data"].data[...] = image
    out = net.forward()
    net.backward()
    net.params["conv1"][0].diff

Blobs and params are host NumPy arrays (``netspec.blob.Blob``); each pass copies
them into one jitted computation and writes the results back, so assigning into
``.data`` is seen by the next pass, as in pycaffe.  Inputs of any size run in the
executable of their size bucket (``netspec.buckets``), with exact results and blobs
at their true shapes; ``buckets="off"`` compiles one executable per input shape.

Recurrent layers (LSTM/RNN without ``expose_hidden``) carry their final h/c from one
pass to the next, as Caffe's do: the net keeps these values between passes (zeros at
first and after a reshape to another batch size), never as blobs of ``net.params``,
``weights()`` or ``save``.
"""
import os
from collections import OrderedDict

import jax
import numpy as np

from . import compiler, layer_range, passes
from .buckets import AUTO, Bucketing, Plan, describe_bucket
from .compilation import Executables
from .blob import Blob
from .errors import NetspecError
from .graph import build_graph, filter_layers
from .layers import TEST, TRAIN, layer_class
from .layer_range import LayerRange, layer_index
from .layers.data import HostPythonLayer, load_python_layer
from .prefetch import HostDataLayers


class _LayerView:
    """An entry of ``net.layers`` (pycaffe's ``caffe.Layer`` view): ``type``, ``blobs``."""

    def __init__(self, name, type_, blobs):
        self.name, self.type, self.blobs = name, type_, blobs

    def __repr__(self):
        return f"<layer {self.name!r} ({self.type})>"


def _parse_net_args(args, weights, phase):
    """pycaffe accepts ``Net(model, phase)``, ``Net(model, weights, phase)`` and keywords."""
    args = list(args)
    if args and isinstance(args[-1], int):
        phase = args.pop()
    if args:
        weights = args.pop(0)
    if args:
        raise TypeError("Net(model, [weights], [phase]) takes at most three positional arguments")
    return weights, TEST if phase is None else phase


def _rewritten_inputs(graph):
    """Input blobs a layer writes in place (``bottom: "data" top: "data"``): after a pass
    they hold the layer's result, as in Caffe."""
    return {t for n in graph.nodes if not n.is_input for t in n.tops if t in graph.inputs}


class Net:
    """A net built from a prototxt (path or ``NetParameter``) for one phase."""

    def __init__(self, model, *args, weights=None, phase=None, level=0, stages=(),
                 python_path=(), seed=0, buckets=AUTO, log=None, prefetch=False, precision="fp32"):
        from .proto import caffe_pb2
        from .prototxt import read_net
        weights, phase = _parse_net_args(args, weights, phase)
        if phase not in (TRAIN, TEST):
            raise NetspecError(f"phase must be netspec.TRAIN or netspec.TEST, got {phase!r}")
        if isinstance(model, caffe_pb2.NetParameter):
            self._net_param, self._source = model, "<NetParameter>"
        else:
            self._net_param, self._source = read_net(str(model)), str(model)
        self.phase, self._level, self._stages = phase, level, tuple(stages)
        self._python_path = tuple(python_path)
        if self._source != "<NetParameter>":   # a Python layer module may sit beside its prototxt
            self._python_path += (os.path.dirname(os.path.abspath(self._source)),)
        self._python_objects = {}       # layer name -> user object, kept across reshapes
        self._prefetch = prefetch
        self.precision = precision
        self._options = compiler.precision_options(precision)
        self._graphs = {}
        self._executables = Executables(log)
        self._rng = jax.random.PRNGKey(seed)
        self._passes = 0
        self._last_rng = None
        self.blobs = OrderedDict()
        self.bucketing = Bucketing(self._build, buckets, name=f'net "{self.label}"')
        self._plan = None               # the bucket plan of the last forward pass
        self._kept_vjp = None           # (plan, VJP) of the last forward pass, for backward()
        self._carried = {}              # layer -> values carried to its next pass (LSTM/RNN h, c)
        self._carried_in = None         # what the last forward pass started from, for backward()
        self._backward_called = False
        self._ranges = {}               # (graph, first, last) -> netspec.layer_range.LayerRange
        self._graph, self._filter_counts = None, {}
        self._set_up_host_data_layers()
        self._filters = self._find_filters()
        self._graph = self._build(self._declared_input_shapes())
        self._create_blobs(self._graph)
        self._set_loss_diffs()
        self._create_params(seed)
        if weights:
            for path in str(weights).split(","):
                self.copy_from(path)

    # -- construction -------------------------------------------------------
    def _state(self):
        from .proto import caffe_pb2
        state = caffe_pb2.NetState(phase=self.phase, level=self._level)
        state.stage.extend(self._stages)
        return state

    def _set_up_host_data_layers(self):
        layers = []
        from .caffe_data import host_data_layer
        for lp in filter_layers(self._net_param, self._state()):
            obj = host_data_layer(lp, self.phase, self._python_path)
            if obj is not None:
                tops = [self.blobs.setdefault(t, Blob()) for t in lp.top]
                obj.setup([], tops)
                obj.reshape([], tops)
                self._python_objects[lp.name] = obj
                layers.append((lp.name, obj, list(lp.top)))
        self._host_data = HostDataLayers(layers)

    def _declared_input_shapes(self):
        return {t: self.blobs[t].shape for _, _, tops in self._host_data.layers for t in tops}

    def _make_impl(self, node, bottom_shapes, phase):
        if node.type == "Filter":
            count = self._filter_counts.get(node.name)
            if count == "all":
                count = int(bottom_shapes[-1][0])
            return layer_class("Filter", node.name)(node.lp, bottom_shapes, phase, selected_count=count)
        if node.type != "Python":
            return None
        obj = self._python_objects.get(node.name)
        if obj is None:
            obj = self._python_objects[node.name] = load_python_layer(node.lp, phase, self._python_path)
        return HostPythonLayer(node.lp, bottom_shapes, phase, obj)

    def _find_filters(self):
        """``[(Filter layer, its selector blob)]`` for the Filter layers whose selector is
        fed from the host (a data layer or an Input): their top batch sizes depend on the
        selector's values, known before a pass only then."""
        filters, fed = [], {t for _, _, tops in self._host_data.layers for t in tops}
        for lp in filter_layers(self._net_param, self._state()):
            if lp.type == "Input":
                fed.update(lp.top)
            if lp.type == "Filter" and lp.bottom and lp.bottom[-1] in fed:
                filters.append((lp.name, lp.bottom[-1]))
        return filters

    def _count_filtered(self):
        """How many items each Filter layer passes this pass; the first build passes them
        all, as Caffe's first Reshape."""
        counts = {}
        for name, selector in self._filters:
            if self._graph is None:
                counts[name] = "all"
            else:
                counts[name] = int(np.count_nonzero(self.blobs[selector].data.reshape(
                    self.blobs[selector].shape[0], -1)[:, 0]))
        return counts

    def _build(self, input_shapes):
        self._filter_counts = self._count_filtered()
        key = tuple(sorted(input_shapes.items())) + tuple(sorted(self._filter_counts.items()))
        if key not in self._graphs:
            self._graphs[key] = build_graph(
                self._net_param, self.phase, self._level, self._stages, input_shapes=input_shapes,
                host_layers=[name for name, _, _ in self._host_data.layers], make_impl=self._make_impl)
        return self._graphs[key]

    def _create_blobs(self, graph):
        for name, shape in graph.blob_shapes.items():
            blob = self.blobs.get(name)
            if blob is None:
                self.blobs[name] = Blob(shape)
            elif blob.shape != shape:
                blob.reshape(*shape)

    def _set_loss_diffs(self):
        """A loss top's diff is its loss weight, as Caffe sets it up (backward starts there)."""
        for node in self._graph.nodes:
            for t, w in zip(node.tops, node.loss_weights):
                if w:
                    self.blobs[t].diff[...] = w

    def _create_params(self, seed):
        params, state = compiler.init_params(self._graph, seed)
        owned = {(layer, i): Blob(data=a) for layer, arrays in params.items() for i, a in enumerate(arrays)}
        self._layer_blobs = OrderedDict()   # every layer's blobs in Caffe order (learned, then state)
        for node in self._graph.nodes:
            blobs = [owned[key] for key in node.param_keys]
            blobs += [Blob(data=a) for a in state.get(node.name, [])]
            self._layer_blobs[node.name] = blobs
        self._state_names = set(state)
        self._num_learned = {node.name: len(node.param_keys) for node in self._graph.nodes}

    # -- pycaffe attributes ---------------------------------------------------
    @property
    def params(self):
        """``{layer: [Blob, ...]}`` for the layers that have blobs (shared blobs appear in each)."""
        return OrderedDict((k, v) for k, v in self._layer_blobs.items() if v)

    @property
    def layers(self):
        return [_LayerView(n.name, n.type, self._layer_blobs[n.name]) for n in self._graph.nodes]

    @property
    def _layer_names(self):
        return [n.name for n in self._graph.nodes]

    @property
    def layer_dict(self):
        return OrderedDict((layer.name, layer) for layer in self.layers)

    @property
    def inputs(self):
        return [t for n in self._graph.nodes if n.type == "Input" for t in n.tops]

    @property
    def outputs(self):
        return list(self._graph.outputs)

    @property
    def top_names(self):
        return OrderedDict((n.name, list(n.tops)) for n in self._graph.nodes)

    @property
    def bottom_names(self):
        return OrderedDict((n.name, list(n.bottoms)) for n in self._graph.nodes)

    @property
    def blob_loss_weights(self):
        weights = OrderedDict((name, 0.0) for name in self.blobs)
        for n in self._graph.nodes:
            for t, w in zip(n.tops, n.loss_weights):
                weights[t] = w
        return weights

    @property
    def loss(self):
        """The net's loss from the last forward pass: sum over weighted tops of ``loss_weight * sum(top)``."""
        return sum(w * float(np.sum(self.blobs[t].data)) for t, w in self.blob_loss_weights.items() if w)

    @property
    def graph(self):
        return self._graph

    @property
    def name(self):
        return self._net_param.name

    @property
    def label(self):
        """What messages call the net: its name, else its prototxt file's name."""
        if self._net_param.name or self._source == "<NetParameter>":
            return self._net_param.name
        return os.path.basename(self._source)

    def graph_for(self, input_shapes):
        """The checked graph for these input blob shapes (built once per shape set, then cached)."""
        return self._build(dict(input_shapes))

    def next_inputs(self):
        """Run the host data layers once; a copy of every input blob's data, ``{name: array}``.

        This is what one training pass feeds the jitted step (the solver calls it while
        the device still works on the previous pass)."""
        self._run_host_data_layers()
        return {name: np.array(self.blobs[name].data) for name in self._graph.inputs}

    # -- the pure view ------------------------------------------------------
    def _param_blobs(self):
        """``{owner_layer: [Blob, ...]}`` of the learned blobs each layer owns."""
        tree = {}
        for node in self._graph.nodes:
            for (owner, i), blob in zip(node.param_keys, self._layer_blobs[node.name]):
                if owner == node.name:
                    tree.setdefault(owner, []).append(blob)
        return tree

    def _stored_blobs(self, name):
        """A layer's stored state blobs: its blobs after the learned ones (Caffe's order)."""
        return self._layer_blobs[name][self._num_learned.get(name, 0):]

    def param_tree(self):
        """Learned blobs as ``{owner_layer: [array, ...]}`` (Caffe shapes), for the pure API:
        device arrays where the values are on the device, host arrays otherwise."""
        return {owner: [b.value() for b in blobs] for owner, blobs in self._param_blobs().items()}

    def state_tree(self):
        """Layer state as the pure API's ``state`` (``netspec.compiler``): the stored blobs
        (BatchNorm statistics) followed, per recurrent layer, by the values it carries into
        its next pass."""
        stored = {name: [b.value() for b in self._stored_blobs(name)] for name in self._state_names}
        return compiler.join_state(self._graph, stored, self._carried)

    def carried_tree(self):
        """``{layer: [array, ...]}``: what each recurrent layer carries into its next pass
        (LSTM: h, c; RNN: h; (1, N, H) each), zeros before the first pass."""
        return compiler.split_state(self._graph, self.state_tree())[1]

    def reset_carried(self):
        """Start the recurrent layers' next pass from zeros (Caffe's ``RecurrentLayer::Reset``)."""
        self._carried, self._carried_in = {}, None

    def _take_state(self, graph, new_state, train):
        """A pass's ``new_state``: the stored blobs (TRAIN passes) and the carried values."""
        stored, carried = compiler.split_state(graph, new_state)
        if train:
            for name, arrays in stored.items():
                if name in self._state_names:
                    for blob, a in zip(self._stored_blobs(name), arrays):
                        blob.set_device(a)
        self._carried.update(carried)

    def _device_trees(self, graph=None, carried=None):
        """param_tree() and state_tree() on the device, the state for ``graph`` (default the
        current one) with ``carried`` (default the kept values); host values are uploaded
        once and kept on the blobs for later passes (netspec.blob)."""
        def upload(blobs):
            values = []
            for blob in blobs:
                value = blob.value()
                if isinstance(value, np.ndarray):
                    value = jax.device_put(value)
                    blob.keep_device_copy(value)
                values.append(value)
            return values
        params = {owner: upload(blobs) for owner, blobs in self._param_blobs().items()}
        state = {name: upload(self._stored_blobs(name)) for name in self._state_names}
        state = compiler.join_state(graph or self._graph, state,
                                    self._carried if carried is None else carried)
        return params, state

    def set_param_tree(self, params, state=None):
        """Take pure-API params (and state), device or host arrays, as the blobs' values
        (and carried values)."""
        for owner, blobs in self._param_blobs().items():
            for blob, value in zip(blobs, params.get(owner, ())):
                self._set_value(blob, value)
        stored, carried = compiler.split_state(self._graph, state or {})
        for name, arrays in stored.items():
            for blob, value in zip(self._stored_blobs(name), arrays):
                self._set_value(blob, value)
        self._carried.update(carried)

    def set_param_diff_tree(self, diffs):
        """Param diffs from a pytree shaped like ``param_tree()`` (device arrays, no copy)."""
        for owner, blobs in self._param_blobs().items():
            for blob, value in zip(blobs, diffs.get(owner, ())):
                blob.set_diff_device(value)

    def show_pass(self, plan, inputs, values):
        """Make a pass run elsewhere (a solver step) this net's latest: the input blobs get
        ``inputs`` (host arrays), the blobs in ``values`` (device arrays of ``plan``'s
        shapes) their values cut to the exact shapes.  Other blobs keep what they held."""
        for name, value in inputs.items():
            self._feed(name, value)
        self.reshape()
        for name, value in values.items():
            self.blobs[name].set_device(value, plan.exact.blob_shapes[name])

    @staticmethod
    def _set_value(blob, value):
        if isinstance(value, jax.Array):
            blob.set_device(value)
        else:
            blob.set_host(value)

    # -- passes -------------------------------------------------------------
    def _input_values(self):
        return {name: self.blobs[name].data for name in self._graph.inputs}

    def reshape(self):
        """Re-derive every blob's shape from the current input blob shapes (pycaffe's ``net.reshape()``)."""
        shapes = {name: self.blobs[name].shape for name in self._graph.inputs}
        graph = self._build(shapes)
        if graph is not self._graph:
            for node in graph.nodes:
                old = self._layer_blobs.get(node.name, [])
                have = [b.shape for b in old[:len(node.param_keys)]]
                want = [tuple(graph.param_shapes[owner][i]) for owner, i in node.param_keys]
                if have != want:
                    raise NetspecError(f'layer "{node.name}": its parameter shapes depend on the input '
                                       f'size ({have} vs {want}); use the size the net declares')
            self._graph = graph
            # recurrent layers restart from zeros after a reshape that changes their shapes
            self._carried = {name: values for name, values in self._carried.items()
                             if [tuple(v.shape) for v in values] == graph.carried_shapes.get(name)}
        self._create_blobs(self._graph)
        self._set_loss_diffs()

    def _next_rng(self):
        self._passes += 1
        return jax.random.fold_in(self._rng, self._passes)

    def _what(self, kind, plan):
        phase = "TRAIN" if self.phase == TRAIN else "TEST"
        return f'{kind} of net "{self.label}" ({phase}), bucket {describe_bucket(plan)}'

    def _compiled(self, kind, plan, make, args, key=()):
        return self._executables.get((kind, id(plan.graph), plan.padded) + tuple(key), make, args,
                                     self._what(kind, plan))

    def _expects_backward(self):
        """Whether forward() keeps the VJP for a backward(): TRAIN nets, nets with
        force_backward, and any net whose backward() has been called."""
        return self.phase == TRAIN or self._graph.force_backward or self._backward_called

    def plan_for(self, inputs):
        """The bucket plan for a pass on ``inputs`` (``{input: host array}``, e.g. from
        ``next_inputs()``); the values matter only to Filter layers, whose top shapes
        depend on them."""
        if self._filter_counts:
            for name, value in inputs.items():
                self._feed(name, value)
        return self._plan_for_shapes({name: value.shape for name, value in inputs.items()})

    def plan(self):
        """The bucket plan for the current input blob shapes (``netspec.buckets.Plan``)."""
        return self._plan_for_shapes({name: self.blobs[name].shape for name in self._graph.inputs})

    def _plan_for_shapes(self, shapes):
        if self._filter_counts:     # the graph depends on values too: exact shapes, no plan cache
            graph = self._build(shapes)
            return Plan(graph, graph)
        return self.bucketing.plan(shapes)

    def _run_host_data_layers(self):
        """One batch from the data layers into the input blobs (from the prefetch thread
        when ``prefetch`` is on: ``netspec.prefetch``)."""
        if not self._host_data:
            return
        if self._prefetch:
            self._host_data.start()
        for name, value in self._host_data.next().items():
            self._feed(name, value)

    def _feed(self, name, value):
        """Host values into input blob ``name``, reshaping it to their shape if needed."""
        blob = self.blobs[name]
        if blob.shape != value.shape:
            blob.reshape(*value.shape)
        blob.data[...] = value

    def set_input_arrays(self, data, labels):
        """Feed the net's MemoryData layer from arrays (pycaffe's ``net.set_input_arrays``):
        ``data`` float32 (N, C, H, W), ``labels`` (N,) or (N, 1, 1, 1), N a multiple of its
        batch size; its passes then walk through them in order."""
        memory = [obj for _, obj, _ in self._host_data.layers if hasattr(obj, "set_input_arrays")]
        if not memory:
            raise NetspecError(f'net "{self.label}": set_input_arrays needs a MemoryData layer, and the net has none')
        self._host_data.restart()
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, None, None, None])
        memory[0].set_input_arrays(data, labels)

    def close(self):
        """Stop the data layers' prefetch thread (if any); later passes run them in place."""
        self._host_data.close()
        self._prefetch = False

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run the net; returns ``{output: array}`` (plus the blobs named in ``blobs``).

        Keyword arguments set input blobs (``net.forward(data=x)``).  ``start``/``end``:
        layer names; only the layers from ``start`` to ``end`` run (Caffe's
        ``ForwardFromTo``: the data layers run only when ``start`` is not given), reading
        the current values of the blobs before ``start``; the returned blobs are then
        ``end``'s tops.  See ``netspec.layer_range``.
        """
        for name, value in kwargs.items():
            if name not in self.blobs or name not in self._graph.inputs:
                raise NetspecError(f'forward(): "{name}" is not an input of the net (inputs: '
                                   f'{", ".join(self._graph.inputs)})')
            self._feed(name, np.asarray(value, np.float32))
        if start is None:
            self._run_host_data_layers()
        self.reshape()
        if start is not None or end is not None:
            self._forward_range(start, end)
        else:
            self._forward_whole()
        outs = list(self.top_names[end]) if end is not None else self.outputs
        outs += [b for b in (blobs or []) if b not in outs]
        return {name: self.blobs[name].data for name in outs}

    def _forward_whole(self):
        """Every layer, in the bucket of the current input shapes; keeps the VJP when a
        backward() is expected."""
        plan = self._plan = self.plan()
        self._last_rng = self._next_rng()
        params, state = self._device_trees(plan.graph)
        self._carried_in = compiler.split_state(plan.graph, state)[1]
        args = (params, state, plan.pad_inputs(self._input_values()), plan.extents, self._last_rng)
        vjp = self._expects_backward()
        train = self.phase == TRAIN
        run = self._compiled("forward", plan, lambda: jax.jit(passes.forward(plan, train, vjp, self._options)),
                             args, key=(vjp,))
        result, _, new_state, pullback = run(*args)
        self._kept_vjp = (plan, pullback) if vjp else None
        rewritten = _rewritten_inputs(plan.graph)
        for name, value in result.items():
            if name not in plan.graph.inputs or name in rewritten:
                self.blobs[name].set_device(value, plan.exact.blob_shapes[name])
        self._take_state(plan.graph, new_state, train)

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Back-propagate from the loss (and from top diffs given as keywords, ``net.backward(prob=d)``).

        Blob diffs are overwritten; param diffs accumulate, as in Caffe (the solver clears them).
        Returns ``{input: diff}`` plus the blobs named in ``diffs``.  ``start``/``end``:
        layer names; only the layers from ``start`` back to ``end`` run (Caffe's
        ``BackwardFromTo``), from the diffs stored on the blobs they write (DeepDream sets
        ``net.blobs[top].diff`` and calls ``backward(start=layer)``); the returned diffs are
        then ``end``'s bottoms'.  See ``netspec.layer_range``.
        """
        if start is not None or end is not None:
            for name, value in kwargs.items():
                if name not in self.blobs:
                    raise NetspecError(f'backward(): the net has no blob "{name}"')
                self.blobs[name].diff[...] = np.asarray(value, np.float32).reshape(self.blobs[name].shape)
            self._backward_range(start, end)
            outs = list(self.bottom_names[end]) if end is not None else list(self.inputs)
            outs += [d for d in (diffs or []) if d not in outs]
            return {name: self.blobs[name].diff for name in outs}
        graph = self._graph
        self._backward_called = True
        plan = self._plan if self._plan is not None and self._plan.exact is graph else self.plan()
        seeds = {}
        for name, value in kwargs.items():
            if name not in graph.blob_shapes:
                raise NetspecError(f'backward(): the net has no blob "{name}"')
            seeds[name] = plan.pad_blob(name, np.asarray(value, np.float32).reshape(graph.blob_shapes[name]))
        seeded = tuple(sorted(seeds))
        kept = self._kept_vjp
        if kept is not None and kept[0] is plan:
            # the forward pass kept its VJP: one backward pass, nothing recomputed
            args = (kept[1], seeds)
            run = self._compiled("backward", plan, lambda: jax.jit(passes.backward_from_vjp(plan.graph, seeded)),
                                 args, key=("vjp", seeded))
        else:
            rng = self._last_rng if self._last_rng is not None else self._next_rng()
            params, state = self._device_trees(plan.graph, self._carried_in)
            args = (params, state, plan.pad_inputs(self._input_values()), plan.extents, seeds, rng)
            run = self._compiled("backward", plan,
                                 lambda: jax.jit(passes.backward(plan, self.phase == TRAIN, seeded,
                                                                 self._options)),
                                 args, key=("recompute", seeded))
        param_grads, blob_grads, input_grads = run(*args)
        blob_grads = {**blob_grads, **(input_grads if graph.force_backward else {})}
        for node in graph.nodes:
            for (owner, i), blob, lr in zip(node.param_keys, self._layer_blobs[node.name], node.lr_mults):
                if owner == node.name and owner in param_grads and (lr != 0 or graph.force_backward):
                    blob.accumulate_diff(param_grads[owner][i])
        for name, blob in self.blobs.items():
            if name in blob_grads and (graph.blob_need_backward.get(name) or graph.force_backward):
                blob.set_diff_device(blob_grads[name])
            elif name in graph.inputs:
                blob.clear_diff()
        for node in graph.nodes:
            for t, w in zip(node.tops, node.loss_weights):
                if w:
                    self.blobs[t].diff[...] = w
        for name, value in seeds.items():
            self.blobs[name].diff[...] = plan.crop(name, value)
        outs = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        return {name: self.blobs[name].diff for name in outs}

    def _layer_range(self, first_name, last_name, what):
        graph = self._graph
        first = 0 if first_name is None else layer_index(graph, first_name, what)
        last = len(graph.nodes) - 1 if last_name is None else layer_index(graph, last_name, what)
        key = (id(graph), first, last)
        if key not in self._ranges:
            self._ranges[key] = LayerRange(graph, first, last)
        return self._ranges[key]

    def _range_what(self, kind, span):
        names = self._graph.nodes
        return f'{kind} of net "{self.label}", layers {names[span.first].name}..{names[span.last].name}'

    def _forward_range(self, start, end):
        """Layers ``start..end`` (names; None: the first/last layer) on the blobs' current values."""
        span = self._layer_range(start, end, "forward(start=..., end=...)")
        self._kept_vjp, self._plan = None, None
        self._last_rng = self._next_rng()
        params, state = self._device_trees(span.graph)
        self._carried_in = compiler.split_state(span.graph, state)[1]
        args = (params, state, {b: self.blobs[b].value() for b in span.reads}, self._last_rng)
        train = self.phase == TRAIN
        run = self._executables.get(("forward range", id(span.graph), span.first, span.last),
                                    lambda: jax.jit(layer_range.forward_range(span, train, self._options)),
                                    args, self._range_what("forward", span))
        written, new_state = run(*args)
        for name, value in written.items():
            self.blobs[name].set_device(value)
        ran = {node.name for node in span.graph.nodes}
        self._take_state(span.graph, {name: v for name, v in new_state.items() if name in ran}, train)

    def _backward_range(self, start, end):
        """Layers ``start`` down to ``end`` (names; None: the last/first layer), from the stored diffs."""
        span = self._layer_range(end, start, "backward(start=..., end=...)")
        graph = self._graph
        self._backward_called = True
        rng = self._last_rng if self._last_rng is not None else self._next_rng()
        params, state = self._device_trees(span.graph, self._carried_in)
        inputs = {b: self.blobs[b].value() for b in span.reads}
        seeds = {t: np.array(self.blobs[t].diff) for t in span.exposed}
        args = (params, state, inputs, seeds, rng)
        run = self._executables.get(("backward range", id(span.graph), span.first, span.last),
                                    lambda: jax.jit(layer_range.backward_range(span, self.phase == TRAIN,
                                                                               self._options)),
                                    args, self._range_what("backward", span))
        param_grads, written_diffs, read_diffs = run(*args)
        learned = set()
        for node in span.graph.nodes:
            for key, lr in zip(node.param_keys, node.lr_mults):
                if lr != 0 or graph.force_backward:
                    learned.add(key)
        owned = self._param_blobs()
        for owner, i in sorted(learned):
            owned[owner][i].accumulate_diff(param_grads[owner][i])
        for name, diff in list(written_diffs.items()) + list(read_diffs.items()):
            if graph.blob_need_backward.get(name) or graph.force_backward:
                self.blobs[name].set_diff_device(diff)

    def clear_param_diffs(self):
        for blobs in self._layer_blobs.values():
            for blob in blobs:
                blob.clear_diff()

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's ``forward_all``: run ``kwargs`` (``{input: array of N items}``) through
        the net in batches of the net's batch size (the first blob's), the last one padded
        with zeros, and concatenate the outputs (plus the blobs named in ``blobs``),
        padding dropped.  The input blobs keep their batch size."""
        if not kwargs:
            return self.forward(blobs=blobs)
        arrays = {name: np.asarray(value) for name, value in kwargs.items()}
        n = len(next(iter(arrays.values())))
        batch = next(iter(self.blobs.values())).shape[0] or 1
        collected = {}
        for start in range(0, n, batch):
            chunk = {}
            for name, value in arrays.items():
                part = value[start:start + batch]
                if len(part) < batch:
                    part = np.concatenate([part, np.zeros((batch - len(part),) + value.shape[1:], part.dtype)])
                chunk[name] = part
            for name, value in self.forward(blobs=blobs, **chunk).items():
                collected.setdefault(name, []).append(value.copy())
        return {name: np.concatenate(parts)[:n] for name, parts in collected.items()}

    # -- weights ------------------------------------------------------------
    def copy_from(self, path):
        """Load a ``.caffemodel`` by layer name (Caffe's ``CopyTrainedLayersFrom``)."""
        from .caffemodel import load_weights, match_blob_shape
        weights = load_weights(path)
        for name, arrays in weights.items():
            target = self._layer_blobs.get(name)
            if target is None or not arrays:
                continue
            if len(arrays) != len(target):
                raise NetspecError(f'{path}: layer "{name}" has {len(arrays)} blobs in the file but '
                                   f'{len(target)} in the net; the weights do not fit this net')
            for i, (blob, array) in enumerate(zip(target, arrays)):
                blob.set_host(match_blob_shape(array, blob.shape, f'{path}: layer "{name}" blob {i}'))

    def share_with(self, other):
        """Use ``other``'s blobs for every layer of the same name (Caffe's ``ShareTrainedLayersWith``)."""
        for name, blobs in self._layer_blobs.items():
            theirs = other._layer_blobs.get(name)
            if not blobs or not theirs:
                continue
            if [b.shape for b in blobs] != [b.shape for b in theirs]:
                raise NetspecError(f'share_with: layer "{name}" has blob shapes {[b.shape for b in blobs]} '
                                   f'here but {[b.shape for b in theirs]} in the other net')
            blobs[:] = theirs

    def weights(self):
        """``{layer: [array, ...]}`` for every layer with blobs, in Caffe's order."""
        return OrderedDict((name, [b.numpy() for b in blobs]) for name, blobs in self._layer_blobs.items() if blobs)

    def to_proto(self):
        """The kept layers as a ``NetParameter`` (structure only)."""
        from .proto import caffe_pb2
        net = caffe_pb2.NetParameter(name=self._net_param.name)
        for node in self._graph.nodes:
            net.layer.add().CopyFrom(node.lp)
            net.layer[-1].phase = self.phase
        return net

    def save(self, path):
        """Write the net's weights as a V2 ``.caffemodel`` (atomically)."""
        from .caffemodel import write_caffemodel
        write_caffemodel(str(path), self.to_proto(), self.weights())

"""Recurrent layers: LSTM, RNN (Caffe's RecurrentLayer family) and LSTMUnit.

Caffe runs LSTM and RNN by unrolling them into an internal net of InnerProduct,
Scale, Eltwise, TanH and LSTMUnit layers.  Here the same arithmetic runs as one
``lax.scan`` over the T time steps; the input-to-hidden products of all steps are
one matrix product before the scan.

Bottoms: x (T, N, ...), cont (T, N) (sequence-continuation indicators: cont_t
multiplies the previous hidden state, and for LSTM the forget gate, so 0 starts a
new sequence), an optional static input x_static (N, ...), and with
``expose_hidden`` the initial states (h0 (1, N, H), then c0 for LSTM).  Tops: the
per-step output (T, N, H), then with ``expose_hidden`` the final states (hT, and
cT for LSTM).

Learned blobs, in the order Caffe's unrolled net registers them (so caffemodels
load): LSTM [W_xc (4H, D), b_c (4H), W_xc_static (4H, D_s) if static, W_hc (4H, H)];
RNN [W_xh (H, D), b_h (H), W_xh_static (H, D_s) if static, W_hh (H, H),
W_ho (H, H), b_o (H)].  Gates are ordered i, f, o, g.

Caffe's backward, reproduced here: nothing flows to cont; with ``expose_hidden``
nothing flows to h0/c0 (the unrolled net shares only their data) and the diffs of
the hT/cT tops are ignored (Caffe zeroes the recurrent outputs' diffs: "we can't
backpropagate across batches").  LSTMUnit's backward is Caffe's CPU formula (see
``_lstm_unit``).

Carried state: without ``expose_hidden`` a pass starts from the final h (and c) of the
layer's previous pass, as Caffe's Forward copies its recurrent outputs into its
recurrent inputs (cont_0 = 0 flushes them); the first pass, and the first after a
reshape to another batch size, start from zeros.  These values are the layer's
``carried_shapes`` ((1, N, H) each, h then c), never layer blobs: caffemodels hold only
the learned blobs above.  No gradient flows into them ("we can't backpropagate across
batches").
"""
import jax
import jax.numpy as jnp
from jax import lax

from .base import Layer, count, register


# ---------------------------------------------------------------------------
# The LSTM cell, with Caffe's backward
# ---------------------------------------------------------------------------

def _unit_activations(gates, cont):
    """i, f, o, g of Caffe's LSTMUnit from (…, 4H) gate inputs; f is scaled by cont."""
    hidden = gates.shape[-1] // 4
    x_i, x_f, x_o, x_g = (gates[..., k * hidden:(k + 1) * hidden] for k in range(4))
    cont = cont[..., None]
    i = jax.nn.sigmoid(x_i)
    f = jnp.where(cont == 0, jnp.zeros((), gates.dtype), cont * jax.nn.sigmoid(x_f))
    o = jax.nn.sigmoid(x_o)
    g = jnp.tanh(x_g)
    return i, f, o, g


@jax.custom_vjp
def _lstm_unit(c_prev, gates, cont):
    """One LSTMUnit step: c = f * c_prev + i * g, h = o * tanh(c).

    c_prev (…, H), gates (…, 4H), cont (…).  Returns (c, h)."""
    i, f, o, g = _unit_activations(gates, cont)
    c = f * c_prev + i * g
    return c, o * jnp.tanh(c)


def _lstm_unit_fwd(c_prev, gates, cont):
    i, f, o, g = _unit_activations(gates, cont)
    c = f * c_prev + i * g
    tanh_c = jnp.tanh(c)
    return (c, o * tanh_c), (c_prev, i, f, o, g, tanh_c, cont)


def _lstm_unit_bwd(residuals, cotangents):
    """Caffe's LSTMUnitLayer::Backward_cpu.  The forget-gate diff is
    c_term * c_prev * f * (1 - f) with f = cont * sigmoid(x_f): the true derivative
    when cont is 0 or 1 (the normal case), not for other cont values (Caffe's GPU
    kernel uses cont * sigmoid'(x_f) there).  No diff for cont."""
    c_prev, i, f, o, g, tanh_c, cont = residuals
    dc, dh = cotangents
    c_term = dc + dh * o * (1 - tanh_c * tanh_c)
    d_i = c_term * g * i * (1 - i)
    d_f = c_term * c_prev * f * (1 - f)
    d_o = dh * tanh_c * o * (1 - o)
    d_g = c_term * i * (1 - g * g)
    return c_term * f, jnp.concatenate([d_i, d_f, d_o, d_g], axis=-1), jnp.zeros_like(cont)


_lstm_unit.defvjp(_lstm_unit_fwd, _lstm_unit_bwd)


@register("LSTMUnit")
class LSTMUnit(Layer):
    """Caffe's LSTMUnit: bottoms c_prev (1, N, H), gate inputs (1, N, 4H) in i, f, o, g
    order, cont (1, N); tops c (1, N, H), h (1, N, H)."""

    min_bottoms = max_bottoms = 3
    min_tops = max_tops = 2
    float32_compute = True

    def setup(self):
        c_prev, gates, cont = self.bottom_shapes
        for i, shape in enumerate(self.bottom_shapes):
            want = 2 if i == 2 else 3
            if len(shape) != want:
                raise self.error(f"bottom[{i}] must have {want} axes, got shape {shape}")
            if shape[0] != 1 or shape[1] != c_prev[1]:
                raise self.error(f"bottom[{i}] shape {shape} must start with (1, {c_prev[1]}) "
                                 f"(one time step of bottom[0]'s {c_prev[1]} streams)")
        if gates[2] != 4 * c_prev[2]:
            raise self.error(f"bottom[1] (gate inputs) needs 4 * {c_prev[2]} = {4 * c_prev[2]} "
                             f"channels, got shape {gates}")

    def top_shapes(self):
        return [self.bottom_shapes[0]] * 2

    def forward(self, ctx, params, bottoms):
        c_prev, gates, cont = bottoms
        cont = lax.stop_gradient(cont).astype(gates.dtype)
        c, h = _lstm_unit(c_prev, gates, cont)
        return [c, h]


# ---------------------------------------------------------------------------
# LSTM and RNN
# ---------------------------------------------------------------------------

class _Recurrent(Layer):
    """What LSTM and RNN share: bottoms, shapes, the input transforms."""

    min_bottoms, max_bottoms = 2, None
    min_tops, max_tops = 1, None
    float32_compute = True      # a long recurrence; Caffe computes it in float32
    num_states = None           # recurrent blobs: 1 (h) for RNN, 2 (h, c) for LSTM

    def setup(self):
        p = self.lp.recurrent_param
        self.hidden = int(p.num_output)
        if self.hidden < 1:
            raise self.error("recurrent_param.num_output must be set (> 0)")
        self.expose_hidden = bool(p.expose_hidden)
        exposed = self.num_states if self.expose_hidden else 0
        nb = len(self.bottom_shapes)
        if not 2 + exposed <= nb <= 3 + exposed:
            raise self.error(f"takes {2 + exposed} or {3 + exposed} bottoms (x, cont, optional "
                             f"x_static{', ' + self._state_names('0') if exposed else ''}), "
                             f"got {nb}")
        if self.num_tops != 1 + exposed:
            raise self.error(f"takes {1 + exposed} top{'s' if exposed else ''}"
                             f"{' (output, ' + self._state_names('T') + ')' if exposed else ''}, "
                             f"got {self.num_tops}")
        self.static_input = nb > 2 + exposed
        x, cont = self.bottom_shapes[:2]
        if len(x) < 3:
            raise self.error(f"bottom[0] (x) must be (T, N, ...) with at least 3 axes (the input "
                             f"transform is an InnerProduct over axes 2..), got shape {x}")
        self.T, self.N = x[0], x[1]
        if tuple(cont) != (self.T, self.N):
            raise self.error(f"bottom[1] (cont) must have shape (T, N) = ({self.T}, {self.N}), "
                             f"got {cont}")
        self.input_dim = count(x[2:])
        if self.static_input:
            static = self.bottom_shapes[2]
            if len(static) < 2 or static[0] != self.N:
                raise self.error(f"bottom[2] (x_static) must be (N, ...) with N = {self.N} and at "
                                 f"least 2 axes, got shape {static}")
            self.static_dim = count(static[1:])
        state_shape = (1, self.N, self.hidden)
        for k in range(exposed):
            index = 2 + self.static_input + k
            if self.bottom_shapes[index] != state_shape:
                raise self.error(f"bottom[{index}] (initial {self._state_list()[k]}) must have "
                                 f"shape {state_shape}, got {self.bottom_shapes[index]}")

    def _state_list(self):
        return ["h", "c"][:self.num_states]

    def _state_names(self, suffix):
        return ", ".join(s + suffix for s in self._state_list())

    def top_shapes(self):
        state = (1, self.N, self.hidden)
        return [(self.T, self.N, self.hidden)] + [state] * (self.num_tops - 1)

    def carried_shapes(self):
        """Without ``expose_hidden``: the final h (and c) handed to the next pass."""
        return [] if self.expose_hidden else [(1, self.N, self.hidden)] * self.num_states

    def _split_bottoms(self, ctx, bottoms):
        x, cont = bottoms[:2]
        static = bottoms[2] if self.static_input else None
        states = bottoms[2 + self.static_input:]
        cont = lax.stop_gradient(cont).astype(x.dtype)
        dtype = x.dtype
        if not states and ctx.carried:      # the previous pass's final states
            states = ctx.carried
        if states:      # Caffe shares only their data: no gradient to the initial states
            states = [lax.stop_gradient(s).reshape(self.N, self.hidden).astype(dtype)
                      for s in states]
        else:
            states = [jnp.zeros((self.N, self.hidden), dtype)] * self.num_states
        return x, cont, static, states

    def _input_transform(self, x, weight, bias, static, static_weight):
        """W x_t + b for all steps (T, N, G), and W_static x_static (N, G) or None."""
        flat = x.reshape(self.T, self.N, self.input_dim)
        projected = flat @ weight.astype(x.dtype).T + bias.astype(x.dtype)
        static_term = None
        if static is not None:
            static_term = static.reshape(self.N, self.static_dim) @ \
                static_weight.astype(x.dtype).T
        return projected, static_term

    def _final_tops(self, ctx, finals):
        if not self.expose_hidden:
            ctx.set_carried([s.reshape(1, self.N, self.hidden) for s in finals])
            return []
        # Caffe drops the diffs of these tops
        return [lax.stop_gradient(s).reshape(1, self.N, self.hidden) for s in finals]


@register("LSTM")
class LSTM(_Recurrent):
    """Caffe's LSTM layer (see the module docstring)."""

    num_states = 2

    def param_shapes(self):
        gates = 4 * self.hidden
        shapes = [(gates, self.input_dim), (gates,)]
        if self.static_input:
            shapes.append((gates, self.static_dim))
        return shapes + [(gates, self.hidden)]

    def param_fillers(self):
        p = self.lp.recurrent_param
        fillers = [p.weight_filler, p.bias_filler]
        if self.static_input:
            fillers.append(p.weight_filler)
        return fillers + [p.weight_filler]

    def forward(self, ctx, params, bottoms):
        x, cont, static, (h0, c0) = self._split_bottoms(ctx, bottoms)
        w_xc, b_c = params[0], params[1]
        w_static = params[2] if self.static_input else None
        w_hc = params[-1].astype(x.dtype)
        gate_x, gate_static = self._input_transform(x, w_xc, b_c, static, w_static)

        def step(carry, inputs):
            h_prev, c_prev = carry
            gx, cont_t = inputs
            h_conted = h_prev * cont_t[:, None]
            gates = h_conted @ w_hc.T + gx
            if gate_static is not None:
                gates = gates + gate_static
            c, h = _lstm_unit(c_prev, gates, cont_t)
            return (h, c), h

        (h_last, c_last), hs = lax.scan(step, (h0, c0), (gate_x, cont))
        return [hs] + self._final_tops(ctx, [h_last, c_last])


@register("RNN")
class RNN(_Recurrent):
    """Caffe's RNN layer: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static
    x_static]), o_t = tanh(W_ho h_t + b_o); the top is o (T, N, H)."""

    num_states = 1

    def param_shapes(self):
        h = self.hidden
        shapes = [(h, self.input_dim), (h,)]
        if self.static_input:
            shapes.append((h, self.static_dim))
        return shapes + [(h, h), (h, h), (h,)]

    def param_fillers(self):
        p = self.lp.recurrent_param
        fillers = [p.weight_filler, p.bias_filler]
        if self.static_input:
            fillers.append(p.weight_filler)
        return fillers + [p.weight_filler, p.weight_filler, p.bias_filler]

    def forward(self, ctx, params, bottoms):
        x, cont, static, (h0,) = self._split_bottoms(ctx, bottoms)
        w_xh, b_h = params[0], params[1]
        w_static = params[2] if self.static_input else None
        w_hh, w_ho, b_o = (p.astype(x.dtype) for p in params[-3:])
        h_x, h_static = self._input_transform(x, w_xh, b_h, static, w_static)

        def step(h_prev, inputs):
            hx, cont_t = inputs
            pre = (h_prev * cont_t[:, None]) @ w_hh.T + hx
            if h_static is not None:
                pre = pre + h_static
            h = jnp.tanh(pre)
            return h, h

        h_last, hs = lax.scan(step, h0, (h_x, cont))
        o = jnp.tanh(hs @ w_ho.T + b_o)
        return [o] + self._final_tops(ctx, [h_last])

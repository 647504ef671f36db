"""LSTM, RNN and LSTMUnit against NumPy loops over time steps and streams.

The references follow the math of Caffe's unrolled nets (lstm_layer.cpp,
rnn_layer.cpp) and LSTMUnitLayer::Backward_cpu, written as plain loops.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import netspec as caffe
from netspec.caffemodel import read_caffemodel, write_caffemodel
from netspec.errors import NetspecError
from netspec.prototxt import parse_net
from tests.layer_harness import check_layer_grads, make_layer, random_params, run_layer

jax.config.update("jax_default_matmul_precision", "highest")


def randn(shape, seed=0, scale=1.0):
    return np.asarray(scale * np.random.RandomState(seed).randn(*shape), np.float32)


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


CONT = np.array([[0, 0], [1, 1], [1, 0], [0, 1], [1, 1]], np.float32)   # (T=5, N=2)


# -- NumPy references ---------------------------------------------------------------

def lstm_reference(x, cont, params, static=None, h0=None, c0=None):
    """Loops over t, n, d; params in Caffe's blob order."""
    T, N = cont.shape
    x = np.asarray(x, np.float64).reshape(T, N, -1)
    w_xc, b_c = np.float64(params[0]), np.float64(params[1])
    w_hc = np.float64(params[-1])
    H = w_hc.shape[1]
    static_term = None
    if static is not None:
        w_s = np.float64(params[2])
        s = np.asarray(static, np.float64).reshape(N, -1)
        static_term = np.array([w_s @ s[n] for n in range(N)])
    h = np.zeros((N, H)) if h0 is None else np.float64(h0).reshape(N, H).copy()
    c = np.zeros((N, H)) if c0 is None else np.float64(c0).reshape(N, H).copy()
    hs = np.zeros((T, N, H))
    for t in range(T):
        h_new, c_new = np.zeros((N, H)), np.zeros((N, H))
        for n in range(N):
            k = float(cont[t, n])
            gate = w_hc @ (k * h[n]) + w_xc @ x[t, n] + b_c
            if static_term is not None:
                gate = gate + static_term[n]
            for d in range(H):
                i = sigmoid(gate[d])
                f = 0.0 if k == 0 else k * sigmoid(gate[H + d])
                o = sigmoid(gate[2 * H + d])
                g = np.tanh(gate[3 * H + d])
                c_new[n, d] = f * c[n, d] + i * g
                h_new[n, d] = o * np.tanh(c_new[n, d])
        h, c = h_new, c_new
        hs[t] = h
    return hs, h, c


def rnn_reference(x, cont, params, static=None, h0=None):
    T, N = cont.shape
    x = np.asarray(x, np.float64).reshape(T, N, -1)
    w_xh, b_h = np.float64(params[0]), np.float64(params[1])
    w_hh, w_ho, b_o = (np.float64(p) for p in params[-3:])
    H = w_hh.shape[0]
    h = np.zeros((N, H)) if h0 is None else np.float64(h0).reshape(N, H).copy()
    out = np.zeros((T, N, H))
    for t in range(T):
        h_new = np.zeros((N, H))
        for n in range(N):
            pre = w_hh @ (float(cont[t, n]) * h[n]) + w_xh @ x[t, n] + b_h
            if static is not None:
                pre = pre + np.float64(params[2]) @ np.float64(static).reshape(N, -1)[n]
            h_new[n] = np.tanh(pre)
            out[t, n] = np.tanh(w_ho @ h_new[n] + b_o)
        h = h_new
    return out, h


def lstm_unit_backward_reference(c_prev, gates, cont, c, dc, dh):
    """Caffe's LSTMUnitLayer::Backward_cpu, loop for loop."""
    _, N, H = c_prev.shape
    dc_prev = np.zeros(c_prev.shape)
    dx = np.zeros(gates.shape)
    for n in range(N):
        k = float(cont[0, n])
        for d in range(H):
            X = gates[0, n]
            i = sigmoid(X[d])
            f = 0.0 if k == 0 else k * sigmoid(X[H + d])
            o = sigmoid(X[2 * H + d])
            g = np.tanh(X[3 * H + d])
            tanh_c = np.tanh(c[0, n, d])
            c_term = dc[0, n, d] + dh[0, n, d] * o * (1 - tanh_c * tanh_c)
            dc_prev[0, n, d] = c_term * f
            dx[0, n, d] = c_term * g * i * (1 - i)
            dx[0, n, H + d] = c_term * c_prev[0, n, d] * f * (1 - f)
            dx[0, n, 2 * H + d] = dh[0, n, d] * tanh_c * o * (1 - o)
            dx[0, n, 3 * H + d] = c_term * i * (1 - g * g)
    return dc_prev, dx


def recurrent_text(kind, hidden, expose=False):
    return (f'type: "{kind}" recurrent_param {{ num_output: {hidden} '
            f'expose_hidden: {str(expose).lower()} '
            'weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
            'bias_filler { type: "constant" value: 0.1 } }')


# -- LSTMUnit -------------------------------------------------------------------------

def test_lstm_unit_forward_and_caffe_backward_with_fractional_cont():
    N, H = 3, 4
    layer = make_layer('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)], num_tops=2)
    assert layer.top_shapes() == [(1, N, H), (1, N, H)]
    c_prev, gates = randn((1, N, H), 1), randn((1, N, 4 * H), 2, 2.0)
    cont = np.array([[1.0, 0.0, 0.5]], np.float32)          # 0.5: Caffe's CPU rule differs
    c, h = run_layer(layer, [c_prev, gates, cont])
    for n in range(N):
        k = float(cont[0, n])
        for d in range(H):
            X = np.float64(gates[0, n])
            f = 0.0 if k == 0 else k * sigmoid(X[H + d])
            c_ref = f * c_prev[0, n, d] + sigmoid(X[d]) * np.tanh(X[3 * H + d])
            assert abs(float(c[0, n, d]) - c_ref) < 1e-5
            assert abs(float(h[0, n, d]) - sigmoid(X[2 * H + d]) * np.tanh(c_ref)) < 1e-5
    dc, dh = randn((1, N, H), 3), randn((1, N, H), 4)

    def objective(c_prev, gates, cont):
        c, h = run_layer(layer, [c_prev, gates, cont])
        return jnp.sum(c * dc) + jnp.sum(h * dh)
    g_cprev, g_gates, g_cont = jax.grad(objective, argnums=(0, 1, 2))(c_prev, gates, cont)
    ref_cprev, ref_gates = lstm_unit_backward_reference(
        np.float64(c_prev), np.float64(gates), cont, np.float64(c), dc, dh)
    assert_close(g_cprev, ref_cprev)
    assert_close(g_gates, ref_gates)
    assert_close(g_cont, np.zeros_like(cont))


def test_lstm_unit_binary_cont_gradient_is_exact():
    N, H = 2, 2
    layer = make_layer('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)], num_tops=2)
    bottoms = [randn((1, N, H), 5), randn((1, N, 4 * H), 6), np.array([[1.0, 0.0]], np.float32)]
    check_layer_grads(layer, bottoms, wrt_bottoms=[0, 1], rtol=1e-4, atol=1e-7)


def test_lstm_unit_shape_errors():
    with pytest.raises(NetspecError, match="4 \\* 3"):
        make_layer('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 8), (1, 2)], num_tops=2)
    with pytest.raises(NetspecError, match="bottom\\[2\\] must have 2 axes"):
        make_layer('type: "LSTMUnit"', [(1, 2, 3), (1, 2, 12), (1, 2, 1)], num_tops=2)


# -- LSTM -----------------------------------------------------------------------------

@pytest.mark.parametrize("x_shape", [(5, 2, 3), (5, 2, 2, 2)])
def test_lstm_forward_matches_loops(x_shape):
    H = 3
    D = int(np.prod(x_shape[2:]))
    layer = make_layer(recurrent_text("LSTM", H), [x_shape, (5, 2)])
    assert layer.param_shapes() == [(4 * H, D), (4 * H,), (4 * H, H)]
    assert layer.top_shapes() == [(5, 2, H)]
    params = random_params(layer, seed=3, scale=0.7)
    x = randn(x_shape, 4)
    (h,) = run_layer(layer, [x, CONT], params)
    assert_close(h, lstm_reference(x, CONT, params)[0])


def test_lstm_static_input_and_exposed_hidden():
    T, N, D, DS, H = 5, 2, 3, 4, 2
    layer = make_layer(recurrent_text("LSTM", H, expose=True),
                       [(T, N, D), (T, N), (N, 2, 2), (1, N, H), (1, N, H)], num_tops=3)
    # Caffe's unrolled-net order: W_xc, b_c, W_xc_static, W_hc
    assert layer.param_shapes() == [(4 * H, D), (4 * H,), (4 * H, DS), (4 * H, H)]
    assert layer.top_shapes() == [(T, N, H), (1, N, H), (1, N, H)]
    params = random_params(layer, seed=5, scale=0.6)
    x, static = randn((T, N, D), 6), randn((N, 2, 2), 7)
    h0, c0 = randn((1, N, H), 8), randn((1, N, H), 9)
    cont = np.ones((T, N), np.float32)
    cont[3, 1] = 0
    h, h_t, c_t = run_layer(layer, [x, cont, static, h0, c0], params)
    ref_h, ref_hT, ref_cT = lstm_reference(x, cont, params, static, h0, c0)
    assert_close(h, ref_h)
    assert_close(h_t, ref_hT[None])
    assert_close(c_t, ref_cT[None])


def test_lstm_gradients():
    layer = make_layer(recurrent_text("LSTM", 2), [(3, 2, 2), (3, 2), (2, 3)])
    params = random_params(layer, seed=10, scale=0.8)
    cont = np.array([[0, 1], [1, 1], [1, 0]], np.float32)
    check_layer_grads(layer, [randn((3, 2, 2), 11), cont, randn((2, 3), 12)], params,
                      wrt_bottoms=[0, 2], rtol=1e-4, atol=1e-7)


def test_lstm_exposed_states_carry_no_gradient():
    """Caffe shares only the data of h0/c0 and ignores the diffs of hT/cT."""
    T, N, H = 3, 2, 2
    layer = make_layer(recurrent_text("LSTM", H, expose=True),
                       [(T, N, 2), (T, N), (1, N, H), (1, N, H)], num_tops=3)
    params = random_params(layer, seed=13)
    bottoms = [randn((T, N, 2), 14), np.ones((T, N), np.float32),
               randn((1, N, H), 15), randn((1, N, H), 16)]

    def objective(bs, weights):
        tops = run_layer(layer, bs, params)
        return sum(jnp.sum(t * w) for t, w in zip(tops, weights))
    weights = [randn((T, N, H), 17), randn((1, N, H), 18), randn((1, N, H), 19)]
    grads = jax.grad(objective)([jnp.asarray(b) for b in bottoms], weights)
    assert np.all(np.asarray(grads[1]) == 0)                       # cont
    assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0)
    only_h = jax.grad(objective)([jnp.asarray(b) for b in bottoms],
                                 [weights[0], 0 * weights[1], 0 * weights[2]])
    assert_close(grads[0], np.asarray(only_h[0]), rtol=1e-6, atol=1e-7)


def test_lstm_scan_matches_unrolled_caffe_net_with_fractional_cont():
    """The scan's backward equals the unrolled net of Caffe's layers (InnerProduct, Scale,
    Eltwise, LSTMUnit with Caffe's backward), also for cont values other than 0/1."""
    T, N, D, H = 4, 2, 3, 2
    layer = make_layer(recurrent_text("LSTM", H), [(T, N, D), (T, N)])
    unit = make_layer('type: "LSTMUnit"', [(1, N, H), (1, N, 4 * H), (1, N)], num_tops=2)
    params = random_params(layer, seed=20, scale=0.8)
    x = randn((T, N, D), 21)
    cont = np.array([[0, 0.3], [1, 0.7], [0.5, 1], [1, 0]], np.float32)
    dh = randn((T, N, H), 22)

    def unrolled(x, params):
        w_xc, b_c, w_hc = params
        gx = x @ w_xc.T + b_c
        h = c = jnp.zeros((1, N, H))
        hs = []
        for t in range(T):
            k = cont[t][None]
            gate = (h * k[..., None]) @ w_hc.T + gx[t][None]
            c, h = run_layer(unit, [c, gate, k])
            hs.append(h)
        return jnp.sum(jnp.concatenate(hs) * dh)

    def scanned(x, params):
        return jnp.sum(run_layer(layer, [x, cont], params)[0] * dh)
    args = (jnp.asarray(x), [jnp.asarray(p) for p in params])
    expected = jax.grad(unrolled, argnums=(0, 1))(*args)
    actual = jax.grad(scanned, argnums=(0, 1))(*args)
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        assert_close(a, np.asarray(e), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text,shapes,tops,message", [
    (recurrent_text("LSTM", 0), [(2, 1, 3), (2, 1)], 1, "num_output"),
    (recurrent_text("LSTM", 2), [(2, 1, 3), (2, 2)], 1, "cont"),
    (recurrent_text("LSTM", 2), [(2, 1), (2, 1)], 1, "at least 3 axes"),
    (recurrent_text("LSTM", 2), [(2, 1, 3), (2, 1), (2, 3), (1, 1)], 1, "takes 2 or 3 bottoms"),
    (recurrent_text("LSTM", 2, expose=True), [(2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 2)], 1,
     "takes 3 tops"),
    (recurrent_text("LSTM", 2, expose=True), [(2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 3)], 3,
     "initial c"),
    (recurrent_text("RNN", 2), [(2, 1, 3), (2, 1), (2, 3)], 1, "x_static"),
])
def test_recurrent_setup_errors(text, shapes, tops, message):
    with pytest.raises(NetspecError, match=message):
        make_layer(text, shapes, num_tops=tops)


# -- RNN ------------------------------------------------------------------------------

def test_rnn_forward_and_param_order():
    T, N, D, H = 5, 2, 3, 4
    layer = make_layer(recurrent_text("RNN", H), [(T, N, D), (T, N)])
    assert layer.param_shapes() == [(H, D), (H,), (H, H), (H, H), (H,)]   # W_xh b_h W_hh W_ho b_o
    params = random_params(layer, seed=23, scale=0.6)
    x = randn((T, N, D), 24)
    (o,) = run_layer(layer, [x, CONT], params)
    assert_close(o, rnn_reference(x, CONT, params)[0])


def test_rnn_static_exposed_hidden_forward_and_gradients():
    T, N, D, DS, H = 3, 2, 2, 3, 2
    layer = make_layer(recurrent_text("RNN", H, expose=True),
                       [(T, N, D), (T, N), (N, DS), (1, N, H)], num_tops=2)
    assert layer.param_shapes() == [(H, D), (H,), (H, DS), (H, H), (H, H), (H,)]
    params = random_params(layer, seed=25, scale=0.7)
    x, static, h0 = randn((T, N, D), 26), randn((N, DS), 27), randn((1, N, H), 28)
    cont = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    o, h_t = run_layer(layer, [x, cont, static, h0], params)
    ref_o, ref_h = rnn_reference(x, cont, params, static, h0)
    assert_close(o, ref_o)
    assert_close(h_t, ref_h[None])
    # gradient check through the output top only (Caffe ignores hT's diff)
    plain = make_layer(recurrent_text("RNN", H), [(T, N, D), (T, N), (N, DS)])
    check_layer_grads(plain, [x, cont, static], params, wrt_bottoms=[0, 2], rtol=1e-4,
                      atol=1e-7)


# -- in a net, and through a caffemodel -----------------------------------------------

LSTM_NET = """
name: "seq"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 0.5 }
        recurrent_param { num_output: 3
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 axis: 2 weight_filler { type: "gaussian" std: 0.5 } } }
"""

NET_CONT = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float32)


def test_lstm_in_a_net():
    net = caffe.Net(parse_net(LSTM_NET), caffe.TEST, seed=3)
    blobs = [b.data for b in net.params["lstm"]]
    assert [b.shape for b in blobs] == [(12, 3), (12,), (12, 3)]
    np.testing.assert_array_equal(blobs[1], np.full(12, 0.2, np.float32))
    assert [net.graph.lr_mults[("lstm", i)] for i in range(3)] == [1.0, 2.0, 0.5]
    x = randn((4, 2, 3), 30)
    out = net.forward(x=x, cont=NET_CONT)
    h = lstm_reference(x, NET_CONT, blobs)[0]
    w, b = (p.data for p in net.params["fc"])
    assert_close(out["y"], h @ np.float64(w).T + b)
    assert_close(net.blobs["h"].data, h)


def test_lstm_caffemodel_blob_order(tmp_path):
    """A caffemodel's LSTM blobs are [W_xc (4H, D), b_c (4H), W_hc (4H, H)]."""
    structure = parse_net(LSTM_NET)
    H, D = 3, 3
    weights = {"lstm": [randn((4 * H, D), 31, 0.5), randn((4 * H,), 32, 0.5),
                        randn((4 * H, H), 33, 0.5)],
               "fc": [randn((2, H), 34), np.zeros(2, np.float32)]}
    path = tmp_path / "lstm.caffemodel"
    write_caffemodel(str(path), structure, weights)
    net = caffe.Net(parse_net(LSTM_NET), str(path), caffe.TEST)
    for blob, array in zip(net.params["lstm"], weights["lstm"]):
        np.testing.assert_array_equal(blob.data, array)
    x = randn((4, 2, 3), 35)
    net.forward(x=x, cont=NET_CONT)
    assert_close(net.blobs["h"].data, lstm_reference(x, NET_CONT, weights["lstm"])[0])
    saved = tmp_path / "saved.caffemodel"
    net.save(str(saved))
    _, read = read_caffemodel(str(saved))
    assert [a.shape for a in read["lstm"]] == [(12, 3), (12,), (12, 3)]
    for a, e in zip(read["lstm"], weights["lstm"]):
        np.testing.assert_array_equal(a, e)


# -- the hidden state carried from one forward pass to the next ------------------------
# Caffe's RecurrentLayer::Forward_cpu (without expose_hidden) starts each pass from the
# final h (and c) of its previous pass; cont = 1 at t = 0 keeps them.

RNN_NET = """
name: "seq_rnn"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 2 dim: 3 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "rnn" type: "RNN" bottom: "x" bottom: "cont" top: "o"
        recurrent_param { num_output: 3
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.2 } } }
"""


def _carry_passes(net, kind, params, batches):
    """Run ``batches`` ((x, cont) pairs) through ``net`` and check each pass against the
    NumPy loop started from the previous pass's final states; returns the last states."""
    states = None
    for x, cont in batches:
        if kind == "LSTM":
            net.forward(x=x, cont=cont)
            h0, c0 = (None, None) if states is None else states
            hs, h, c = lstm_reference(x, cont, params, h0=h0, c0=c0)
            assert_close(net.blobs["h"].data, hs)
            states = (h, c)
        else:
            net.forward(x=x, cont=cont)
            out, h = rnn_reference(x, cont, params, h0=None if states is None else states[0])
            assert_close(net.blobs["o"].data, out)
            states = (h,)
        carried = net.carried_tree()[kind.lower()]
        assert [a.shape for a in carried] == [(1, cont.shape[1], 3)] * len(states)
        for got, want in zip(carried, states):
            assert_close(got, want[None])
    return states


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_recurrent_state_carries_across_passes_and_resets_on_reshape(kind):
    net = caffe.Net(parse_net(LSTM_NET if kind == "LSTM" else RNN_NET), caffe.TEST, seed=7)
    layer = kind.lower()
    params = [np.array(b.data) for b in net.params[layer]]
    assert len(params) == (3 if kind == "LSTM" else 5)      # the learned blobs only
    ones = np.ones((4, 2), np.float32)
    batches = [(randn((4, 2, 3), 40 + i), ones) for i in range(3)]
    states = _carry_passes(net, kind, params, batches)
    # the carry matters: a fresh start differs from the third pass
    fresh = lstm_reference(*batches[2], params)[0] if kind == "LSTM" else \
        rnn_reference(*batches[2], params)[0]
    top = "h" if kind == "LSTM" else "o"
    assert np.abs(net.blobs[top].data - fresh).max() > 1e-3
    assert [a.shape for a in net.weights()[layer]] == [a.shape for a in params]
    assert len(net.params[layer]) == len(params) and len(net.layer_dict[layer].blobs) == len(params)
    # another batch size: the states restart from zeros, then carry again
    ones3 = np.ones((4, 3), np.float32)
    _carry_passes(net, kind, params, [(randn((4, 3, 3), 50 + i), ones3) for i in range(2)])
    # back to batch 2: zeros again (the batch-3 states do not fit)
    _carry_passes(net, kind, params, [(randn((4, 2, 3), 60), ones)])
    # cont = 0 at t = 0 flushes the carried states: equal to a fresh start
    cont = ones.copy()
    cont[0] = 0
    x = randn((4, 2, 3), 61)
    net.forward(x=x, cont=cont)
    want = lstm_reference(x, cont, params)[0] if kind == "LSTM" else rnn_reference(x, cont, params)[0]
    assert_close(net.blobs[top].data, want)
    # an explicit reset (Caffe's RecurrentLayer::Reset)
    net.reset_carried()
    _carry_passes(net, kind, params, batches[:1])
    del states


def test_lstm_carried_state_in_layer_range_passes_and_in_train_phase():
    net = caffe.Net(parse_net(LSTM_NET), caffe.TRAIN, seed=8)
    params = [np.array(b.data) for b in net.params["lstm"]]
    ones = np.ones((4, 2), np.float32)
    x1, x2, x3 = (randn((4, 2, 3), 70 + i) for i in range(3))
    net.forward(x=x1, cont=ones)                        # a TRAIN pass carries too
    _, h, c = lstm_reference(x1, ones, params)
    net.blobs["x"].data[...] = x2
    net.blobs["cont"].data[...] = ones
    net.forward(start="lstm", end="lstm")               # so does a layer range
    hs, h, c = lstm_reference(x2, ones, params, h0=h, c0=c)
    assert_close(net.blobs["h"].data, hs)
    net.forward(x=x3, cont=ones)
    hs, h, c = lstm_reference(x3, ones, params, h0=h, c0=c)
    assert_close(net.blobs["h"].data, hs)


def test_carried_state_never_reaches_the_caffemodel(tmp_path):
    net = caffe.Net(parse_net(LSTM_NET), caffe.TEST, seed=9)
    ones = np.ones((4, 2), np.float32)
    for i in range(2):
        net.forward(x=randn((4, 2, 3), 80 + i), cont=ones)
    path = tmp_path / "carried.caffemodel"
    net.save(str(path))
    _, read = read_caffemodel(str(path))
    assert sorted(name for name, blobs in read.items() if blobs) == ["fc", "lstm"]
    assert [a.shape for a in read["lstm"]] == [(12, 3), (12,), (12, 3)]
    for a, blob in zip(read["lstm"], net.params["lstm"]):
        np.testing.assert_array_equal(a, blob.data)
    # a net loading it starts from zeros
    other = caffe.Net(parse_net(LSTM_NET), str(path), caffe.TEST)
    x = randn((4, 2, 3), 82)
    other.forward(x=x, cont=ones)
    assert_close(other.blobs["h"].data, lstm_reference(x, ones, read["lstm"])[0])


def test_pure_forward_threads_carried_state():
    from netspec import compiler
    from netspec.graph import build_graph
    graph = build_graph(parse_net(LSTM_NET), caffe.TEST)
    assert graph.carried_shapes == {"lstm": [(1, 2, 3), (1, 2, 3)]}
    assert "lstm" not in graph.state_shapes
    params, state = compiler.init_params(graph, seed=1)
    assert state == {}
    ones = np.ones((4, 2), np.float32)
    x1, x2 = randn((4, 2, 3), 90), randn((4, 2, 3), 91)
    run = jax.jit(lambda p, s, x: compiler.forward(graph, p, s, {"x": x, "cont": ones}))
    state = compiler.join_state(graph, state, compiler.init_carried(graph))
    blobs, _, state = run(params, state, x1)
    _, h, c = lstm_reference(x1, ones, params["lstm"])
    assert_close(state["lstm"][0], h[None])
    assert_close(state["lstm"][1], c[None])
    blobs, _, _ = run(params, state, x2)
    assert_close(blobs["h"], lstm_reference(x2, ones, params["lstm"], h0=h, c0=c)[0])
    # without carried values (e.g. CaffeModule): every call starts from zeros
    blobs, _, _ = compiler.forward(graph, params, {}, {"x": x2, "cont": ones})
    assert_close(blobs["h"], lstm_reference(x2, ones, params["lstm"])[0])
    assert compiler.split_state(graph, state)[0] == {}


def test_no_gradient_into_the_previous_pass_state():
    from netspec import compiler
    from netspec.graph import build_graph
    graph = build_graph(parse_net(LSTM_NET), caffe.TEST)
    params, _ = compiler.init_params(graph, seed=2)
    ones = np.ones((4, 2), np.float32)
    carried = {"lstm": [randn((1, 2, 3), 92), randn((1, 2, 3), 93)]}

    def loss(carried):
        blobs, _, _ = compiler.forward(graph, params, compiler.join_state(graph, {}, carried),
                                       {"x": randn((4, 2, 3), 94), "cont": ones})
        return jnp.sum(blobs["y"])
    grads = jax.grad(loss)(carried)
    assert all(float(jnp.abs(g).max()) == 0 for g in grads["lstm"])


LSTM_TRAIN_NET = """
name: "seq_train"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 2 dim: 2 } } }
layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 3 dim: 2 } } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 3 dim: 2 dim: 3 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 1 }
        recurrent_param { num_output: 3
          weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "target" top: "loss" }
"""


def _jax_lstm(params, x, cont, h, c):
    """Caffe's unrolled LSTM, step by step, in JAX (cont in {0, 1})."""
    w_xc, b_c, w_hc = params
    H = w_hc.shape[1]
    hs = []
    for t in range(x.shape[0]):
        k = cont[t][:, None]
        gates = (k * h) @ w_hc.T + x[t] @ w_xc.T + b_c
        i, f, o, g = (gates[:, j * H:(j + 1) * H] for j in range(4))
        i, f, o, g = jax.nn.sigmoid(i), k * jax.nn.sigmoid(f), jax.nn.sigmoid(o), jnp.tanh(g)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        hs.append(h)
    return jnp.stack(hs), h, c


def _train_reference(params, batches, lr, lr_mults, carry):
    """SGD (no momentum) on Caffe's EuclideanLoss, carrying h/c across steps (or not);
    the copied-in states get no gradient.  Returns the losses and the final params."""
    params = [jnp.asarray(p) for p in params]
    N, H = batches[0][1].shape[1], params[-1].shape[1]
    h = c = jnp.zeros((N, H))
    losses = []

    def loss_fn(params, x, cont, target, h, c):
        hs, h_t, c_t = _jax_lstm(params, x, cont, h, c)
        return jnp.sum((hs - target) ** 2) / (2 * x.shape[0]), (h_t, c_t)
    for x, cont, target in batches:
        if not carry:
            h = c = jnp.zeros((N, H))
        (loss, (h, c)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, cont, target, h, c)
        params = [p - lr * m * g for p, m, g in zip(params, lr_mults, grads)]
        losses.append(float(loss))
    return losses, params


def test_solver_carries_lstm_state_across_steps(tmp_path):
    from netspec.prototxt import parse_solver
    from netspec.solver import Solver
    solver_param = parse_solver('base_lr: 0.5 lr_policy: "fixed" max_iter: 10 random_seed: 3 '
                                'display: 0')
    solver_param.net_param.CopyFrom(parse_net(LSTM_TRAIN_NET))
    solver = Solver(solver_param)
    initial = [np.array(b.data) for b in solver.net.params["lstm"]]
    ones = np.ones((3, 2), np.float32)
    batch = (randn((3, 2, 2), 100), ones, randn((3, 2, 3), 101, 0.5))
    for name, value in zip(("x", "cont", "target"), batch):
        solver.net.blobs[name].data[...] = value
    losses = []
    for _ in range(3):
        solver.step(1)
        losses.append(solver.smoothed_loss)
    with jax.default_matmul_precision("highest"):
        want, params = _train_reference(initial, [batch] * 3, 0.5, (1, 2, 1), carry=True)
        zero_start, _ = _train_reference(initial, [batch] * 3, 0.5, (1, 2, 1), carry=False)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert abs(losses[1] - zero_start[1]) > 1e-4 * abs(zero_start[1])
    for blob, p in zip(solver.net.params["lstm"], params):
        assert_close(blob.data, np.asarray(p), rtol=1e-4, atol=1e-6)
    # the step's final states went back to the net; a snapshot holds only the params
    assert [a.shape for a in solver.net.carried_tree()["lstm"]] == [(1, 2, 3)] * 2
    solver.param.snapshot_prefix = str(tmp_path / "seq")
    model, _ = solver.snapshot()
    _, read = read_caffemodel(model)
    assert [a.shape for a in read["lstm"]] == [(12, 2), (12,), (12, 3)]


def test_backward_recomputes_from_the_state_the_pass_started_from():
    """A TEST net keeps no VJP: backward() recomputes the last pass from the states it
    started from (not from the states it handed on), as Caffe's backward uses that pass."""
    net = caffe.Net(parse_net(LSTM_NET), caffe.TEST, seed=11)
    params = [jnp.asarray(b.data) for b in net.params["lstm"]]
    w, b = (jnp.asarray(p.data) for p in net.params["fc"])
    ones = np.ones((4, 2), np.float32)
    x1, x2 = randn((4, 2, 3), 110), randn((4, 2, 3), 111)
    net.forward(x=x1, cont=ones)
    net.forward(x=x2, cont=ones)
    seed = randn((4, 2, 2), 112)
    net.backward(y=seed)
    _, h, c = lstm_reference(x1, ones, [np.asarray(p) for p in params])

    def objective(params):
        hs, _, _ = _jax_lstm(params, jnp.asarray(x2), jnp.asarray(ones), jnp.asarray(h, jnp.float32),
                             jnp.asarray(c, jnp.float32))
        return jnp.sum(seed * (hs @ w.T + b))
    with jax.default_matmul_precision("highest"):
        grads = jax.grad(objective)(params)
    for blob, g in zip(net.params["lstm"], grads):
        assert_close(blob.diff, np.asarray(g), rtol=1e-4, atol=1e-5)

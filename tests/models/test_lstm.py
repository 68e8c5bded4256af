"""The LSTM baseline: LSTMCellOp (ops/lstm.py) and LSTM / LSTMLanguageModel (models/lstm.py).

Oracles: finite differences (float64 gradcheck with a random cotangent), the same cell composed
from existing Tensor ops (sigmoid, tanh, matmul), the sequence run in two halves with the state
carried over, and torch.nn.LSTM with copied weights when torch is installed. A short training run
checks that the whole model learns a periodic sequence.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
import tinygrad_llm.nn.functional as F
from tinygrad_llm.models.lstm import LSTM, LSTMLanguageModel
from tinygrad_llm.ops.lstm import LSTMCellOp


def _cell_inputs(B, H, device="cpu", seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = [(B, 4 * H), (B, H), (B, H), (4 * H, H)]
    return [tl.Tensor(rng.standard_normal(s) * scale, requires_grad=True, device=device)
            for s in shapes]


def _cell_composed(gates_x, h_prev, c_prev, w_hh):
    """The cell from existing ops: the oracle for LSTMCellOp's forward."""
    H = h_prev.shape[1]
    z = gates_x + h_prev @ w_hh.T
    i, f = z[:, :H].sigmoid(), z[:, H:2 * H].sigmoid()
    g, o = z[:, 2 * H:3 * H].tanh(), z[:, 3 * H:].sigmoid()
    c = f * c_prev + i * g
    return tl.stack([o * c.tanh(), c])


# ---- LSTMCellOp ----------------------------------------------------------------------------
@pytest.mark.parametrize("B, H", [(1, 1), (1, 3), (3, 5), (2, 7)])
def test_cell_gradcheck_every_input(device, B, H):
    inputs = _cell_inputs(B, H, device)
    assert tl.gradcheck(lambda *a: LSTMCellOp.apply(*a), *inputs)


def test_cell_gradcheck_through_h_only_and_c_only(device):
    # each half of the stacked output alone: dh and dc must each reach every input
    inputs = _cell_inputs(2, 3, device, seed=1)
    assert tl.gradcheck(lambda *a: LSTMCellOp.apply(*a)[0], *inputs)
    assert tl.gradcheck(lambda *a: LSTMCellOp.apply(*a)[1], *inputs)


def test_cell_gradcheck_saturated_gates(device):
    # large pre-activations: sigmoid and tanh near 0 / 1, where a wrong derivative form shows
    inputs = _cell_inputs(2, 3, device, seed=2, scale=4.0)
    assert tl.gradcheck(lambda *a: LSTMCellOp.apply(*a), *inputs)


@pytest.mark.parametrize("B, H", [(1, 1), (3, 5), (4, 16)])
def test_cell_matches_composition_of_tensor_ops(device, B, H):
    inputs = _cell_inputs(B, H, device, seed=3, scale=2.0)
    out = LSTMCellOp.apply(*inputs)
    ref = _cell_composed(*inputs)
    assert out.shape == (2, B, H)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12, atol=1e-12)
    # and the same gradients for one random cotangent
    dy = np.random.default_rng(4).standard_normal(out.shape)
    out.backward(tl.Tensor(dy, device=device))
    grads = [x.grad.numpy().copy() for x in inputs]
    for x in inputs:
        x.grad = None
    ref.backward(tl.Tensor(dy, device=device))
    for g, x in zip(grads, inputs):
        np.testing.assert_allclose(g, x.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_cell_float32_stays_float32(device):
    inputs = [tl.Tensor(x.numpy().astype(np.float32), requires_grad=True, device=device)
              for x in _cell_inputs(2, 3, device)]
    out = LSTMCellOp.apply(*inputs)
    assert out.dtype == np.float32
    out.backward(tl.ones(out.shape, device=device))
    assert all(x.grad.dtype == np.float32 for x in inputs)


def test_cell_needs_grad_subset(device):
    # only w_hh trainable: the other gradients are skipped, w_hh's still correct
    gx, h, c, w = _cell_inputs(2, 3, device)
    gx.requires_grad = h.requires_grad = c.requires_grad = False
    assert tl.gradcheck(lambda *a: LSTMCellOp.apply(*a), gx, h, c, w)
    assert gx.grad is None and h.grad is None and c.grad is None


@pytest.mark.parametrize("which, shape", [(0, (2, 11)), (2, (2, 4)), (3, (12, 4))])
def test_cell_bad_shapes_name_the_argument(which, shape):
    inputs = [x.detach() for x in _cell_inputs(2, 3)]
    inputs[which] = tl.zeros(shape, dtype=np.float64)
    name = ["gates_x", "h_prev", "c_prev", "w_hh"][which]
    with pytest.raises(ValueError, match=f"{name} has shape"):
        LSTMCellOp.apply(*inputs)


# ---- LSTM layer ------------------------------------------------------------------------------
def _lstm64(input_size, hidden, layers, device="cpu", **kw):
    return LSTM(input_size, hidden, layers, device=device, dtype=np.float64, **kw)


def test_lstm_shapes_and_parameter_count():
    lstm = LSTM(3, 5, num_layers=2)
    names = [n for n, _ in lstm.named_parameters()]
    assert names == ["layers.0.w_ih", "layers.0.w_hh", "layers.0.b",
                     "layers.1.w_ih", "layers.1.w_hh", "layers.1.b"]
    assert lstm.num_parameters() == (20 * 3 + 20 * 5 + 20) + (20 * 5 + 20 * 5 + 20)
    out, (h, c) = lstm(tl.randn(2, 4, 3))
    assert out.shape == (2, 4, 5) and h.shape == c.shape == (2, 2, 5)
    assert out.dtype == h.dtype == np.float32
    # the last layer's final h is the last output step
    np.testing.assert_array_equal(h.numpy()[1], out.numpy()[:, -1])


def test_lstm_init_is_uniform_in_bound_and_forget_bias_option():
    H = 8
    lstm = LSTM(4, H, forget_bias=1.0)
    bound = 1 / np.sqrt(H)
    layer = lstm.layers[0]
    for w in (layer.w_ih, layer.w_hh):
        assert np.abs(w.numpy()).max() <= bound
        assert np.abs(w.numpy()).max() > bound / 2         # spread over the range, not tiny
    b = lstm.layers[0].b.numpy()
    np.testing.assert_array_equal(b[H:2 * H], 1.0)
    assert np.abs(np.delete(b, np.s_[H:2 * H])).max() <= bound
    assert np.abs(LSTM(4, H).layers[0].b.numpy()[H:2 * H]).max() <= bound


def test_lstm_two_layers_gradcheck_directions(device):
    lstm = _lstm64(3, 4, 2, device)
    rng = np.random.default_rng(5)
    x = tl.Tensor(rng.standard_normal((2, 3, 3)), requires_grad=True, device=device)
    h0 = tl.Tensor(rng.standard_normal((2, 2, 4)) * 0.5, requires_grad=True, device=device)
    c0 = tl.Tensor(rng.standard_normal((2, 2, 4)) * 0.5, requires_grad=True, device=device)
    params = list(lstm.parameters())

    def run(x, h0, c0, *_params):           # the params are lstm's own: gradcheck edits them
        out, (h, c) = lstm(x, (h0, c0))
        return tl.cat([out.reshape(-1), h.reshape(-1), c.reshape(-1)])

    assert tl.gradcheck(run, x, h0, c0, *params, directions=6)


def test_lstm_gradcheck_catches_a_planted_bug(device, monkeypatch):
    # the check above can fail: break dw_hh by a factor of 2 and it must
    import tinygrad_llm.ops.lstm as lstm_ops
    real = LSTMCellOp.backward

    def doubled(ctx, dhc):
        dx, dh, dc, dw = real(ctx, dhc)
        return dx, dh, dc, (None if dw is None else 2 * dw)

    monkeypatch.setattr(lstm_ops.LSTMCellOp, "backward", staticmethod(doubled))
    lstm = _lstm64(2, 3, 1, device)
    x = tl.Tensor(np.random.default_rng(6).standard_normal((1, 3, 2)), device=device)
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda x, w: lstm(x)[0], x, lstm.layers[0].w_hh, directions=3)


def test_lstm_state_carry_matches_one_pass(device):
    lstm = _lstm64(3, 4, 2, device)
    x = tl.Tensor(np.random.default_rng(7).standard_normal((2, 6, 3)), device=device)
    full, (h6, c6) = lstm(x)
    first, state = lstm(x[:, :3])
    second, (h, c) = lstm(x[:, 3:], state)
    np.testing.assert_allclose(np.concatenate([first.numpy(), second.numpy()], axis=1),
                               full.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(h.numpy(), h6.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(c.numpy(), c6.numpy(), rtol=1e-13, atol=1e-13)
    # and the state matters: starting the second half from zeros gives something else
    fresh, _ = lstm(x[:, 3:])
    assert not np.allclose(fresh.numpy(), second.numpy())


def test_lstm_bad_input_names_what_was_expected():
    lstm = LSTM(3, 4, 2)
    with pytest.raises(ValueError, match=r"input must be \(B, T, input_size=3\), got shape"):
        lstm(tl.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match="state h has shape"):
        lstm(tl.zeros((2, 5, 3)), (tl.zeros((1, 2, 4)), tl.zeros((2, 2, 4))))
    with pytest.raises(TypeError, match="state must be a pair"):
        lstm(tl.zeros((2, 5, 3)), tl.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got 0"):
        LSTM(3, 0)


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    lstm = _lstm64(3, 5, 2)
    ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for k, layer in enumerate(lstm.layers):
            getattr(ref, f"weight_ih_l{k}").copy_(torch.from_numpy(layer.w_ih.numpy()))
            getattr(ref, f"weight_hh_l{k}").copy_(torch.from_numpy(layer.w_hh.numpy()))
            getattr(ref, f"bias_ih_l{k}").copy_(torch.from_numpy(layer.b.numpy()))
            getattr(ref, f"bias_hh_l{k}").zero_()
    x = np.random.default_rng(8).standard_normal((2, 4, 3))
    out, (h, c) = lstm(tl.Tensor(x))
    ref_out, (ref_h, ref_c) = ref(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), ref_out.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), ref_h.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c.numpy(), ref_c.detach().numpy(), rtol=1e-12, atol=1e-12)
    # gradients of every weight for one random cotangent on the outputs
    dy = np.random.default_rng(9).standard_normal(out.shape)
    out.backward(tl.Tensor(dy))
    ref_out.backward(torch.from_numpy(dy))
    for k, layer in enumerate(lstm.layers):
        for ours, theirs in ((layer.w_ih, f"weight_ih_l{k}"), (layer.w_hh, f"weight_hh_l{k}"),
                             (layer.b, f"bias_ih_l{k}")):
            np.testing.assert_allclose(ours.grad.numpy(), getattr(ref, theirs).grad.numpy(),
                                       rtol=1e-10, atol=1e-12)


# ---- LSTMLanguageModel -----------------------------------------------------------------------
def test_language_model_shapes_state_and_bad_ids():
    model = LSTMLanguageModel(vocab_size=7, n_embd=4, hidden_size=6, n_layer=2)
    idx = np.array([[0, 1, 2], [6, 5, 4]])
    logits = model(idx)
    assert logits.shape == (2, 3, 7) and logits.dtype == np.float32
    logits2, (h, c) = model(idx, return_state=True)
    np.testing.assert_array_equal(logits.numpy(), logits2.numpy())
    assert h.shape == c.shape == (2, 2, 6)
    assert model.num_parameters() == (7 * 4 + (24 * 4 + 24 * 6 + 24) + (24 * 6 * 2 + 24)
                                      + (6 * 7 + 7))
    with pytest.raises(ValueError, match="id 9 is out of range"):
        model(np.array([[0, 9, 1]]))


def test_language_model_state_carry():
    model = LSTMLanguageModel(5, 4, 6, 1, dtype=np.float64)
    idx = np.array([[0, 1, 2, 3, 4, 0]])
    full = model(idx)
    a, state = model(idx[:, :3], return_state=True)
    b = model(idx[:, 3:], state)
    np.testing.assert_allclose(np.concatenate([a.numpy(), b.numpy()], axis=1), full.numpy(),
                               rtol=1e-13, atol=1e-13)


def test_language_model_learns_a_periodic_sequence():
    # a period-5 sequence: after one period of context the next token is fully determined, so
    # the loss can fall far below the uniform ln 5 = 1.61
    period, B, T, lr = 5, 8, 12, 1.0
    model = LSTMLanguageModel(vocab_size=period, n_embd=8, hidden_size=16, n_layer=1)
    pattern = np.array([3, 0, 4, 1, 2])
    rng = np.random.default_rng(9)
    losses = []
    for step in range(150):
        starts = rng.integers(0, period, B)
        seq = pattern[(starts[:, None] + np.arange(T + 1)) % period]      # (B, T + 1)
        loss = F.cross_entropy(model(seq[:, :-1]), seq[:, 1:])
        model.zero_grad()
        loss.backward()
        with tl.no_grad():
            for p in model.parameters():
                p.data -= lr * p.grad.data
        losses.append(loss.item())
    assert losses[0] > 1.3
    assert np.mean(losses[-10:]) < 0.1, losses[::10]

"""The Module API: registration and dotted names, tied parameters, traversal, train/eval, freezing,
dtype and device moves, state_dict round trips and strict loading, parameter counts, the
containers (ModuleList, Sequential, ModuleDict), the early-assignment error and repr.

The modules here are small hand-built trees (`Net` below) so each name and count is known in
advance; the layers themselves are tested in test_layers.py.
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm import nn
from tinygrad_llm.nn.module import Module, ModuleDict, ModuleList, Parameter, Sequential


class Net(Module):
    """emb (V=5, C=3) -> body: [Linear(3, 4), Linear(4, 3)] -> head (3 -> 5), head tied to emb
    when tie=True; a persistent buffer `scale` and a non-persistent buffer `table`."""

    def __init__(self, tie=False):
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.body = ModuleList([nn.Linear(3, 4), nn.Linear(4, 3)])
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3, 5, bias=False)
        if tie:
            self.head.weight = self.emb.weight
        self.register_buffer("scale", np.full((3,), 2.0, dtype=np.float32))
        self.register_buffer("table", np.arange(6, dtype=np.float32).reshape(2, 3),
                             persistent=False)

    def forward(self, ids):
        x = self.emb(ids)
        for layer in self.body:
            x = layer(x)
        return self.head(self.drop(x) * tl.Tensor(self.scale))


NAMES = ["emb.weight", "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias",
         "head.weight"]
IDS = np.array([[0, 3, 4], [2, 2, 1]])


# ---- names, order, tied parameters ---------------------------------------------------------
def test_named_parameters_order_and_dotted_names():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == NAMES
    assert all(isinstance(p, Parameter) and p.requires_grad for p in net.parameters())
    assert [n for n, _ in net.named_parameters(prefix="model")] == ["model." + n for n in NAMES]
    assert net.body[1].bias is dict(net.named_parameters())["body.1.bias"]


def test_tied_parameter_listed_once_but_saved_under_both_names():
    net = Net(tie=True)
    names = [n for n, _ in net.named_parameters()]
    assert names == NAMES[:-1]                               # head.weight is emb.weight
    assert len(list(net.parameters())) == 5
    all_names = [n for n, _ in net.named_parameters(remove_duplicate=False)]
    assert all_names == NAMES
    sd = net.state_dict()
    assert "emb.weight" in sd and "head.weight" in sd
    assert net.head.weight is net.emb.weight
    # both entries share the one array: an edit through one is seen through the other
    sd["emb.weight"].data[0, 0] = 123.0
    assert net.head.weight.data[0, 0] == 123.0
    assert net.num_parameters() == 5 * 3 + 3 * 4 + 4 + 4 * 3 + 3


def test_tied_gradient_accumulates_both_uses():
    net = Net(tie=True)
    net.eval()
    net(IDS).sum().backward()
    g_tied = net.emb.weight.grad.numpy().copy()
    # untie (same values) and add the two gradients by hand
    net2 = Net(tie=False)
    net2.load_state_dict({k: v for k, v in net.state_dict().items()})
    net2.eval()
    net2(IDS).sum().backward()
    np.testing.assert_allclose(g_tied, net2.emb.weight.grad.numpy() + net2.head.weight.grad.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_children_and_modules():
    net = Net()
    assert [n for n, _ in net.named_children()] == ["emb", "body", "drop", "head"]
    assert list(net.children())[1] is net.body
    names = [n for n, _ in net.named_modules()]
    assert names == ["", "emb", "body", "body.0", "body.1", "drop", "head"]
    assert len(list(net.modules())) == 7
    # a module reachable twice is visited once
    shared = nn.Linear(2, 2)
    seq = Sequential(shared, shared)
    assert len(list(seq.modules())) == 2
    assert len(list(seq.parameters())) == 2


def test_buffers_persistent_and_not():
    net = Net()
    assert [n for n, _ in net.named_buffers()] == ["scale", "table"]
    sd = net.state_dict()
    assert "scale" in sd and "table" not in sd


def test_reassigning_an_attribute_replaces_the_registration():
    lin = nn.Linear(3, 2)
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.bias = Parameter(np.zeros(2, dtype=np.float32))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    del lin.bias
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


# ---- modes, gradients, freezing ------------------------------------------------------------
def test_train_eval_recurse_and_change_dropout():
    net = Net()
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    a, b = net(IDS).numpy(), net(IDS).numpy()
    np.testing.assert_array_equal(a, b)                      # eval: dropout is the identity
    assert net.train() is net
    assert all(m.training for m in net.modules())
    c = net(IDS).numpy()
    assert not np.allclose(a, c)                             # train: p=0.5 zeroes some elements
    net.body.eval()                                          # a subtree only
    assert net.training and not net.body.training and not net.body[0].training


def test_zero_grad():
    net = Net()
    net(IDS).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_requires_grad_false_freezes():
    net = Net()
    net.body.requires_grad_(False)
    assert not any(p.requires_grad for p in net.body.parameters())
    net(IDS).sum().backward()
    assert all(p.grad is None for p in net.body.parameters())
    assert net.emb.weight.grad is not None and net.head.weight.grad is not None
    assert net.num_parameters(trainable_only=True) == 5 * 3 + 3 * 5
    net.requires_grad_(True)
    assert all(p.requires_grad for p in net.parameters())


# ---- dtype and device ----------------------------------------------------------------------
def test_to_float64_casts_parameters_and_buffers_and_keeps_ties():
    net = Net(tie=True)
    before = {n: p for n, p in net.named_parameters()}
    assert net.to(dtype=np.float64) is net
    for n, p in net.named_parameters():
        assert p.dtype == np.float64, n
        assert p is before[n]                                # cast in place, same objects
        assert p.requires_grad
    assert net.head.weight is net.emb.weight
    assert net.scale.dtype == np.float64 and net.table.dtype == np.float64
    assert net.state_dict()["scale"].dtype == np.float64
    out = net(IDS)
    assert out.dtype == np.float64
    out.sum().backward()
    assert net.body[0].weight.grad.dtype == np.float64


def test_to_keeps_integer_buffers():
    m = Module()
    m.register_buffer("ids", np.arange(3))
    m.to(dtype=np.float64)
    assert m.ids.dtype.kind == "i"


def test_to_unknown_device_raises():
    with pytest.raises(ValueError, match="tpu"):
        Net().to("tpu")


def test_to_device_moves_parameters_and_buffers(device):
    # device: "cpu", and "cuda" (gpu-marked, skipped without CuPy; tests/conftest.py)
    net = Net(tie=True).to(device)
    assert net.device == device
    assert all(p.device == device for p in net.parameters())
    assert tl.backend.device_of(net.scale) == device
    assert tl.backend.device_of(net.table) == device
    assert net.head.weight is net.emb.weight
    assert net(IDS).device == device


# ---- state_dict / load_state_dict ----------------------------------------------------------
def test_state_dict_round_trip():
    tl.manual_seed(1)
    a = Net()
    tl.manual_seed(2)
    b = Net()
    b.scale[...] = 7.0
    assert not np.allclose(a.body[0].weight.numpy(), b.body[0].weight.numpy())
    arrays = {k: v.numpy().copy() for k, v in b.state_dict().items()}   # plain arrays work too
    missing, unexpected = a.load_state_dict(arrays)
    assert missing == [] and unexpected == []
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), arrays[k])
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(IDS).numpy(), b(IDS).numpy())
    # loading copies: the loaded module does not alias the source arrays
    arrays["emb.weight"][...] = 0.0
    assert np.abs(a.emb.weight.numpy()).sum() > 0


def test_state_dict_values_are_detached_tensors_sharing_storage():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["scale"] + NAMES                    # module by module, as PyTorch
    assert all(not v.requires_grad for v in sd.values())
    sd["body.0.bias"].data[0] = 42.0
    assert net.body[0].bias.data[0] == 42.0


def test_load_state_dict_casts_to_the_parameter_dtype():
    net = Net()
    sd = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    assert all(p.dtype == np.float32 for p in net.parameters())


def test_load_state_dict_strict_lists_every_problem():
    net = Net()
    sd = dict(net.state_dict())
    del sd["body.1.bias"]
    sd["extra.weight"] = np.zeros(3, dtype=np.float32)
    sd["body.0.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError) as err:
        net.load_state_dict(sd)
    msg = str(err.value)
    assert "body.1.bias" in msg and "missing" in msg
    assert "extra.weight" in msg and "unexpected" in msg
    assert "body.0.weight" in msg and "(2, 2)" in msg and "(4, 3)" in msg


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    tl.manual_seed(3)
    src = Net()
    net = Net()
    sd = {k: v.numpy().copy() for k, v in src.state_dict().items()}
    del sd["head.weight"]
    sd["unused"] = np.ones(2, dtype=np.float32)
    head_before = net.head.weight.numpy().copy()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["head.weight"] and unexpected == ["unused"]
    np.testing.assert_array_equal(net.emb.weight.numpy(), src.emb.weight.numpy())
    np.testing.assert_array_equal(net.head.weight.numpy(), head_before)
    # a wrong shape is an error even when not strict
    sd["emb.weight"] = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="emb.weight"):
        net.load_state_dict(sd, strict=False)


def test_load_state_dict_rejects_non_arrays():
    net = Net()
    sd = dict(net.state_dict())
    sd["body.0.bias"] = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(TypeError, match="body.0.bias"):
        net.load_state_dict(sd)


# ---- counts, containers, errors, repr ------------------------------------------------------
def test_num_parameters():
    net = Net()
    assert net.num_parameters() == 5 * 3 + (3 * 4 + 4) + (4 * 3 + 3) + 3 * 5
    assert nn.Linear(7, 2, bias=False).num_parameters() == 14
    assert Module().num_parameters() == 0


def test_module_list():
    layers = ModuleList([nn.Linear(2, 3), nn.Linear(3, 4)])
    layers.append(nn.Linear(4, 1))
    assert len(layers) == 3
    assert [l.out_features for l in layers] == [3, 4, 1]
    assert layers[-1].out_features == 1
    sub = layers[1:]
    assert isinstance(sub, ModuleList) and [l.out_features for l in sub] == [4, 1]
    assert [n for n, _ in layers.named_parameters()][:2] == ["0.weight", "0.bias"]
    assert [n for n, _ in layers.named_parameters()][-1] == "2.bias"


def test_sequential_applies_in_order():
    a, b = nn.Linear(3, 4), nn.Linear(4, 2)
    seq = Sequential(a, b)
    x = tl.Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    np.testing.assert_allclose(seq(x).numpy(), b(a(x)).numpy(), rtol=1e-6)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_module_dict():
    d = ModuleDict({"enc": nn.Linear(2, 3)})
    d["dec"] = nn.Linear(3, 2)
    assert "enc" in d and "dec" in d and "x" not in d and len(d) == 2
    assert list(d.keys()) == ["enc", "dec"]
    assert d["dec"].in_features == 3
    assert [n for n, _ in d.named_parameters()] == ["enc.weight", "enc.bias", "dec.weight",
                                                   "dec.bias"]
    assert [k for k, _ in d.items()] == ["enc", "dec"] and len(list(d.values())) == 2


def test_assigning_before_super_init_is_a_clear_error():
    class Early(Module):
        def __init__(self):
            self.w = Parameter(np.zeros(2, dtype=np.float32))
            super().__init__()

    with pytest.raises(AttributeError, match=r"super\(\)\.__init__\(\).*'w'"):
        Early()


def test_forward_not_defined():
    with pytest.raises(NotImplementedError, match="Module"):
        Module()(1)


def test_apply_visits_children_first():
    net = Net()
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("Linear") == 3 and len(seen) == 7


def test_repr_shows_the_tree():
    text = repr(Net())
    lines = text.splitlines()
    assert lines[0] == "Net("
    assert "  (emb): Embedding(5, 3)" in lines
    assert "  (body): ModuleList(" in lines
    assert "    (0): Linear(3, 4, bias=True)" in lines           # nested one level deeper
    assert "  (drop): Dropout(p=0.5)" in lines
    assert "  (head): Linear(3, 5, bias=False)" in lines
    assert lines[-1] == ")"
    assert repr(nn.Linear(2, 3)) == "Linear(2, 3, bias=True)"

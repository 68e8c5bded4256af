"""The gradient checker itself: ops with planted backward bugs must fail it, with a message that
says which input, which element and both values; correct ops must pass.

(`tl.tensor` is the constructor function, as `torch.tensor`; the Function base class is imported
from the module.)
"""
import numpy as np
import pytest

import tinygrad_llm as tl
from tinygrad_llm.tensor import Function


class SquareOp(Function):
    # y = x^2   dx = 2 x dy   (correct)
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return x * x

    @staticmethod
    def backward(ctx, dy):
        return 2 * ctx.saved[0] * dy


class SquareOffBy2Op(SquareOp):
    # planted bug: dx = 4 x dy
    @staticmethod
    def backward(ctx, dy):
        return 4 * ctx.saved[0] * dy


class MatMulOp(Function):
    # y = a @ b   da = dy b^T   db = a^T dy   (correct)
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return dy @ b.T, a.T @ dy


class MatMulTransposedDyOp(MatMulOp):
    # planted bug: dy (M, N), M != N, read in transposed order: da = dy^T (as (M, N)) b^T
    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return dy.T.reshape(dy.shape) @ b.T, a.T @ dy


class MatMulBadDbOp(MatMulOp):
    # planted bug in the second input only: db = a^T dy / 2
    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return dy @ b.T, a.T @ dy / 2


ROWS = np.array([0, 2, 2])


class GatherRowsOp(Function):
    # y = x[rows]   dx[rows] += dy   (correct: row 2 is picked twice, its gradients add up)
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x[ROWS]

    @staticmethod
    def backward(ctx, dy):
        dx = np.zeros(ctx.shape)
        np.add.at(dx, ROWS, dy)
        return dx


class GatherWrongRowOp(GatherRowsOp):
    # planted bug: the gradient of y[1] is sent to row 1 instead of row 2
    @staticmethod
    def backward(ctx, dy):
        dx = np.zeros(ctx.shape)
        dx[[0, 1, 2]] = dy
        return dx


class ReverseOp(Function):
    # y = x reversed   planted bug: dx = dy, not reversed (a uniform cotangent cannot see it)
    @staticmethod
    def forward(ctx, x):
        return x[::-1].copy()

    @staticmethod
    def backward(ctx, dy):
        return dy


class ForgetsSecondInputOp(Function):
    # y = a * b   planted bug: no gradient for b
    @staticmethod
    def forward(ctx, a, b):
        ctx.save(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return dy * b, None


def leaf(shape, seed=0):
    rng = np.random.default_rng(seed)
    return tl.Tensor(rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape),
                     requires_grad=True)


BUGS = [
    # name, function, input shapes, the input and the first element the message must name
    ("off_by_2", lambda x: SquareOffBy2Op.apply(x), [(2, 3)], "input 0", "(0, 0)"),
    ("transposed_dy", lambda a, b: MatMulTransposedDyOp.apply(a, b), [(2, 3), (3, 4)],
     "input 0", "(0, 0)"),
    ("bad_second_input", lambda a, b: MatMulBadDbOp.apply(a, b), [(2, 3), (3, 4)],
     "input 1", "(0, 0)"),
    ("wrong_element", lambda x: GatherWrongRowOp.apply(x), [(3, 2)], "input 0", "(1, 0)"),
    ("wrong_element_reversed", lambda x: ReverseOp.apply(x), [(5,)], "input 0", "(0,)"),
    ("missing_gradient", lambda a, b: ForgetsSecondInputOp.apply(a, b), [(2, 2), (2, 2)],
     "input 1", "(0, 0)"),
]


@pytest.mark.parametrize("fn,shapes,which,index", [pytest.param(*b[1:], id=b[0]) for b in BUGS])
def test_planted_bug_is_caught_element_by_element(fn, shapes, which, index):
    inputs = [leaf(s, seed=i) for i, s in enumerate(shapes)]
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(fn, *inputs)
    message = str(info.value)
    for word in (which, f"index {index}", "analytic", "numeric", "max abs error"):
        assert word in message, f"{word!r} not in {message!r}"
    assert not tl.gradcheck(fn, *inputs, raise_exception=False)


@pytest.mark.parametrize("fn,shapes", [pytest.param(*b[1:3], id=b[0]) for b in BUGS])
def test_planted_bug_is_caught_along_random_directions(fn, shapes):
    inputs = [leaf(s, seed=i) for i, s in enumerate(shapes)]
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(fn, *inputs, directions=3)
    message = str(info.value)
    assert "analytic" in message and "numeric" in message and "direction" in message
    assert not tl.gradcheck(fn, *inputs, directions=3, raise_exception=False)


def test_a_uniform_cotangent_would_hide_the_misrouted_gradient():
    # why gradcheck contracts with a random cotangent: through .sum() the reversal bug is invisible
    x = leaf((5,))
    assert tl.gradcheck(lambda x: ReverseOp.apply(x).sum(), x)
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda x: ReverseOp.apply(x), x)


CORRECT = [
    pytest.param(lambda x: SquareOp.apply(x), [(2, 3)], id="square"),
    pytest.param(lambda a, b: MatMulOp.apply(a, b), [(2, 3), (3, 4)], id="matmul"),
    pytest.param(lambda x: GatherRowsOp.apply(x), [(3, 2)], id="gather_repeated_rows"),
    pytest.param(lambda a, b: (a * b).exp() + a / (b * b + 1.0), [(2, 3), (3,)], id="composite"),
]


@pytest.mark.parametrize("fn,shapes", CORRECT)
@pytest.mark.parametrize("directions", [None, 3])
def test_correct_op_passes(fn, shapes, directions):
    inputs = [leaf(s, seed=i) for i, s in enumerate(shapes)]
    assert tl.gradcheck(fn, *inputs, directions=directions) is True


def test_inputs_not_requiring_grad_are_passed_through_unchecked():
    a, b = leaf((2, 2)), tl.Tensor(np.ones((2, 2)))      # b has no grad: its bug is not looked at
    assert tl.gradcheck(lambda a, b, k: ForgetsSecondInputOp.apply(a, b) * k, a, b, 3.0)


def test_inputs_are_restored_after_the_check():
    x = leaf((2, 3))
    before = x.numpy().copy()
    assert tl.gradcheck(lambda x: SquareOp.apply(x), x)
    np.testing.assert_array_equal(x.numpy(), before)
    assert x.data.dtype == np.float64 and x.requires_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_float64_inputs_raise_type_error(dtype):
    x = tl.Tensor(np.ones(3, dtype), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        tl.gradcheck(lambda x: SquareOp.apply(x), x)


def test_gradcheck_error_is_an_assertion_error():
    assert issubclass(tl.GradcheckError, AssertionError)

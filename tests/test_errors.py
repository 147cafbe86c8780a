"""Bad input: every error names the op and shows what it got (shapes, dtypes, values), so a student can fix the call."""
from __future__ import annotations

import numpy as np
import pytest

from minidni import Tensor, nn, ops


def t(shape, dtype=np.float32, requires_grad=False):
    return Tensor(np.ones(shape, dtype=dtype), requires_grad=requires_grad)


def shape_text(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def both_shapes(op, a, b):
    return rf"{op}.*{shape_text(a)}.*{shape_text(b)}"


# ---- shapes ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("sa,sb", [((3, 4), (5,)), ((2, 3), (3, 2)), ((4, 1, 3), (2, 4))])
def test_arithmetic_shapes_that_do_not_broadcast(op, sa, sb):
    with pytest.raises(ValueError, match=both_shapes(op, sa, sb) + ".*broadcast"):
        getattr(ops, op)(t(sa), t(sb))


def test_operator_syntax_gives_the_same_error():
    with pytest.raises(ValueError, match=both_shapes("add", (3, 4), (5,))):
        t((3, 4)) + t((5,))


def test_matmul_inner_dimensions():
    with pytest.raises(ValueError, match=both_shapes("matmul", (3, 4), (5, 2)) + r".*4 != 5"):
        ops.matmul(t((3, 4)), t((5, 2)))


def test_matmul_needs_2d():
    with pytest.raises(ValueError, match=r"matmul: b must be 2-D, got shape \(4,\)"):
        ops.matmul(t((3, 4)), t((4,)))


def test_linear_feature_mismatch():
    with pytest.raises(ValueError, match=r"linear: x has 5 features.*\(2, 5\).*W expects 4.*\(4, 3\)"):
        ops.linear(t((2, 5)), t((4, 3)))


def test_linear_bias_shape():
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(3,\).*\(4, 3\).*got \(4,\)"):
        ops.linear(t((2, 4)), t((4, 3)), t((4,)))


def test_linear_module_with_wrong_input():
    layer = nn.Linear(4, 3, rng=0)
    with pytest.raises(ValueError, match=r"linear: x has 6 features"):
        layer(t((2, 6)))


def test_mse_shape_mismatch():
    with pytest.raises(ValueError, match=both_shapes("mse_loss", (3, 4), (4,))):
        ops.mse_loss(t((3, 4)), t((4,)))


def test_mse_reduction_is_mean_or_sum():
    a, b = Tensor(np.arange(6.0).reshape(2, 3)), Tensor(np.zeros((2, 3)))
    assert ops.mse_loss(a, b, reduction="sum").item() == 55.0 and ops.mse_loss(a, b).item() == 55.0 / 6
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'max'"):
        ops.mse_loss(a, b, reduction="max")


def test_batch_norm_gamma_shape():
    with pytest.raises(ValueError, match=r"batch_norm: x has shape \(5, 3\).*gamma \(4,\)"):
        ops.batch_norm(t((5, 3)), t((4,)), t((3,)))


def test_batch_norm_running_stats_shape_and_dtype():
    x, g, b = t((5, 3)), t((3,)), t((3,))
    with pytest.raises(ValueError, match=r"batch_norm: running_mean.*\(3,\).*\(2,\)"):
        ops.batch_norm(x, g, b, np.zeros(2, np.float32), np.ones(3, np.float32), training=False)
    with pytest.raises(ValueError, match=r"batch_norm: running_var.*float32.*float64"):
        ops.batch_norm(x, g, b, np.zeros(3, np.float32), np.ones(3), training=True)


def test_batch_norm_needs_two_rows_to_train_and_stats_to_eval():
    with pytest.raises(ValueError, match=r"batch_norm: training needs.*at least 2 rows.*\(1, 3\)"):
        ops.batch_norm(t((1, 3)), t((3,)), t((3,)))
    with pytest.raises(ValueError, match="batch_norm: eval mode needs running_mean and running_var"):
        ops.batch_norm(t((4, 3)), t((3,)), t((3,)), np.zeros(3, np.float32), None, training=False)


def test_batch_norm_input_must_be_2d():
    with pytest.raises(ValueError, match=r"batch_norm: x must be 2-D, got shape \(2, 3, 4\)"):
        ops.batch_norm(t((2, 3, 4)), t((3,)), t((3,)))


def test_reshape_and_concat():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape \(2, 3\) \(6 elements\) into \(4, 2\)"):
        t((2, 3)).reshape(4, 2)
    with pytest.raises(ValueError, match=r"concat along axis 0: tensor 1 has shape \(2, 4\), tensor 0 has \(2, 3\)"):
        ops.concat([t((2, 3)), t((2, 4))], axis=0)


def test_backward_grad_shape():
    y = t((2, 3), np.float64, requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"backward\(grad\).*\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


# ---- dtypes -----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,op", [
    (lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"), (lambda a, b: a * b, "mul"), (lambda a, b: a / b, "div"),
    (lambda a, b: ops.matmul(a.reshape(2, 2), b.reshape(2, 2)), "matmul"),
    (lambda a, b: ops.linear(a.reshape(2, 2), b.reshape(2, 2)), "linear"),
    (lambda a, b: ops.mse_loss(a, b), "mse_loss"),
    (lambda a, b: ops.concat([a, b]), "concat"),
    (lambda a, b: ops.batch_norm(a.reshape(2, 2), b[:2], b[2:]), "batch_norm"),
])
def test_mixed_float32_float64_raise_type_error(call, op):
    a, b = t((4,), np.float32), t((4,), np.float64)
    with pytest.raises(TypeError, match=rf"{op}: mixed dtypes float32 and float64.*astype"):
        call(a, b)


def test_mixed_dtypes_with_a_numpy_array():
    with pytest.raises(TypeError, match="add: mixed dtypes float32 and float64"):
        t((3,)) + np.ones(3)


def test_python_numbers_take_the_tensor_dtype():
    assert (t((3,)) * 2.5).dtype == np.float32
    assert (1 - t((3,), np.float64)).dtype == np.float64


def test_linear_bias_dtype():
    with pytest.raises(TypeError, match="linear: mixed dtypes"):
        ops.linear(t((2, 4)), t((4, 3)), t((3,), np.float64))


def test_astype_to_integer_refused():
    with pytest.raises(TypeError, match="astype.*float dtypes only.*int32"):
        t((3,)).astype(np.int32)


def test_requires_grad_on_integer_data():
    with pytest.raises(TypeError, match=r"requires_grad=True.*float32 or float64.*int64"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="int"):
        Tensor([1, 2, 3], requires_grad=True)  # a list of ints is labels, not a float tensor


def test_parameter_on_integer_data():
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Parameter(np.arange(4))


# ---- labels -------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,match", [
    (np.array([0, 3, 1]), r"cross_entropy: labels must lie in \[0, 2\] for 3 classes; found \[3\]"),
    (np.array([0, -1, 1]), r"cross_entropy: labels must lie in \[0, 2\].*found \[-1\]"),
    (np.array([0, 1]), r"cross_entropy: expected one label per row of logits, i.e. shape \(3,\); got \(2,\)"),
    (np.array([[0], [1], [2]]), r"cross_entropy: expected one label per row.*got \(3, 1\)"),
])
def test_bad_labels_raise_value_error(labels, match, backend):
    with pytest.raises(ValueError, match=match):
        ops.cross_entropy(t((3, 3), requires_grad=True), labels)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0, 2.0]), np.array([True, False, True]), ["a", "b", "c"]])
def test_labels_of_wrong_dtype_raise_type_error(labels):
    with pytest.raises(TypeError, match="cross_entropy: labels must be integers"):
        ops.cross_entropy(t((3, 3)), labels)


def test_labels_as_tensor_and_list_are_fine(backend):
    z = Tensor(np.zeros((2, 3)))
    np.testing.assert_allclose(ops.cross_entropy(z, [0, 2]).data, np.log(3))
    np.testing.assert_allclose(ops.cross_entropy(z, Tensor(np.array([1, 1], np.int32))).data, np.log(3))


def test_logits_must_be_2d():
    with pytest.raises(ValueError, match=r"cross_entropy: logits must be 2-D, got shape \(3,\)"):
        ops.cross_entropy(t((3,)), np.array([0]))


# ---- non-finite values reaching a loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,where", [(np.nan, (1, 2)), (np.inf, (1, 2)), (-np.inf, (1, 1))])
def test_non_finite_logits(bad, where, backend):
    z = np.zeros((3, 4))
    z[where] = bad
    with pytest.raises(FloatingPointError, match=r"cross_entropy: the loss is .*input 0: 1 non-finite of 12"), \
            np.errstate(invalid="ignore", over="ignore"):
        ops.cross_entropy(Tensor(z, requires_grad=True), np.array([0, 1, 2]))


def test_minus_inf_logit_off_the_label_is_a_mask(backend):
    """-inf on a wrong class is a probability of exactly 0 (masked softmax): the loss stays finite, no error."""
    z = np.zeros((2, 3))
    z[0, 2] = -np.inf
    zt = Tensor(z, requires_grad=True)
    loss = ops.cross_entropy(zt, np.array([0, 1]))
    np.testing.assert_allclose(loss.data, (np.log(2) + np.log(3)) / 2)
    loss.backward()
    assert np.all(np.isfinite(zt.grad)) and zt.grad[0, 2] == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_mse(bad, backend):
    a, b = np.zeros((2, 3)), np.zeros((2, 3))
    b[0, 0] = bad
    with pytest.raises(FloatingPointError, match=r"mse_loss: the loss is .*input 1: 1 non-finite of 6.*detect_anomaly"), \
            np.errstate(invalid="ignore", over="ignore"):
        ops.mse_loss(Tensor(a, requires_grad=True), Tensor(b))


def test_mse_overflow_to_inf_float32(backend):
    a = Tensor(np.full(4, 1e30, np.float32))
    with pytest.raises(FloatingPointError, match="mse_loss: the loss is inf"), np.errstate(over="ignore"):
        ops.mse_loss(a, Tensor(np.zeros(4, np.float32)))


# ---- modules ------------------------------------------------------------------------------------------------------------------
def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="Sequential: item 1 is a function, not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_mlp_argument_checks():
    with pytest.raises(ValueError, match="mlp: unknown activation 'gelu'"):
        nn.mlp(4, 8, 3, n_hidden=1, activation="gelu")
    with pytest.raises(ValueError, match="mlp: n_hidden must be >= 0"):
        nn.mlp(4, 8, 3, n_hidden=-1)


def test_unknown_backend():
    from minidni.kernels import set_backend

    with pytest.raises(ValueError, match="unknown backend 'cuda'.*numba, numpy"):
        set_backend("cuda")


def test_fused_ops_name_themselves_in_errors():
    with pytest.raises(ValueError, match=r"linear_relu: x has 5 features.*W expects 4"):
        ops.linear_relu(t((2, 5)), t((4, 3)))
    with pytest.raises(ValueError, match=r"linear_relu: bias must have shape \(3,\)"):
        ops.linear_relu(t((2, 4)), t((4, 3)), t((4,)))
    with pytest.raises(TypeError, match="linear_relu: mixed dtypes"):
        ops.linear_relu(t((2, 4)), t((4, 3)), t((3,), np.float64))
    with pytest.raises(ValueError, match=r"batch_norm_relu: x has shape \(5, 3\).*gamma \(4,\)"):
        ops.batch_norm_relu(t((5, 3)), t((4,)), t((3,)))
    with pytest.raises(ValueError, match=r"batch_norm_relu: training needs.*at least 2 rows"):
        ops.batch_norm_relu(t((1, 3)), t((3,)), t((3,)))
    with pytest.raises(ValueError, match=r"batch_norm_relu: running_var.*float32.*float64"):
        ops.batch_norm_relu(t((5, 3)), t((3,)), t((3,)), np.zeros(3, np.float32), np.ones(3))


# ---- silent acceptance in the Python API (issue 13, item 9) ------------------------------------------------------------
@pytest.mark.parametrize("data,came", [
    ([None, 1], r"dtype object.*first non-number is None \(NoneType\)"),
    (np.array([1.0, None]), r"ndarray of dtype object.*None"),
    (["1", "2"], r"dtype <U1.*'1'"),
    ([1 + 2j], r"dtype complex128"),
])
def test_tensor_refuses_what_is_not_a_real_number(data, came):
    with pytest.raises(TypeError, match=r"Tensor: data must be real numbers.*" + came):
        Tensor(data)
    with pytest.raises(TypeError, match=r"Tensor: data must be real numbers"):
        Tensor(data, dtype=np.float64)   # an explicit dtype must not turn None into nan either


def test_tensor_still_takes_numbers_lists_and_labels():
    assert Tensor([1.5, 2]).dtype == np.float32 and Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.ones(2, np.float16)).dtype == np.float32 and Tensor([True]).dtype == np.bool_
    assert Tensor(np.ones(2)).dtype == np.float64 and np.isnan(Tensor([np.nan, 1.0]).data[0])


@pytest.mark.parametrize("k", [1.5, -1, "2", True])
def test_delayed_k_must_be_a_whole_number_of_batches(k):
    from minidni.dni import schedules as S

    with pytest.raises(ValueError, match=rf"delayed: k .* must be an integer >= 0, got {k!r}"):
        S.delayed(k)


def test_delayed_takes_numpy_integers():
    from minidni.dni import schedules as S

    assert S.delayed(np.int64(2)).k == 2 and S.delayed(0).per_batch


@pytest.mark.parametrize("call,what", [
    (lambda S: S.dni().grid(n_batches=3, n_modules=-1), r"dni\(\)\.events: n_modules must be an integer >= 1, got -1"),
    (lambda S: S.locked().events(0, 3), r"locked\(\)\.events: n_batches must be an integer >= 1, got 0"),
    (lambda S: S.pipelined().events(4, 0), r"n_modules must be an integer >= 1, got 0"),
    (lambda S: S.stochastic(0.5).describe(2.5, 2), r"n_batches must be an integer >= 1, got 2.5"),
    (lambda S: S.delayed(1).first_tick(0, 0), r"delayed\(k=1\)\.first_tick: n_modules must be an integer >= 1"),
])
def test_schedules_refuse_empty_or_negative_sizes(call, what):
    from minidni.dni import schedules as S

    with pytest.raises(ValueError, match=what):
        call(S)


@pytest.mark.parametrize("fused", [False, True])
def test_dninet_refuses_a_synthesizer_of_the_wrong_width(fused):
    from minidni.dni import DNINet, Synthesizer, mlp_modules

    modules = mlp_modules(8, 16, 3, n_hidden=2, rng=0, fused=fused)
    with pytest.raises(ValueError, match=r"DNINet: synthesizer 1 predicts the gradient of 12 features, but module 1 "
                                         r"outputs 16 features.*Synthesizer\(16, \.\.\.\)"):
        DNINet(modules, [Synthesizer(16, rng=0), Synthesizer(12, 3, rng=0)])
    DNINet(modules, [Synthesizer(16, rng=0), Synthesizer(16, 3, rng=0)])   # the right widths build


def test_dninet_refuses_a_conv_synthesizer_of_the_wrong_channels():
    from minidni.dni import DNINet
    from minidni.dni.synthesizer import ConvSynthesizer

    block = nn.Sequential(nn.Conv2d(1, 4, 3, padding="same", rng=0), nn.ReLU(), nn.MaxPool2d(2))
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 3, rng=0))
    with pytest.raises(ValueError, match=r"synthesizer 0 predicts the gradient of 5 channels, but module 0 outputs "
                                         r"4 channels.*ConvSynthesizer\(4, \.\.\.\)"):
        DNINet([block, head], [ConvSynthesizer(5, rng=0)])
    DNINet([block, head], [ConvSynthesizer(4, rng=0)])


@pytest.mark.parametrize("make,what", [
    (lambda: nn.Linear(0, 3), r"Linear\(0, 3\): in_features must be a positive integer.*got 0"),
    (lambda: nn.Linear(3, -2), r"Linear\(3, -2\): out_features must be a positive integer.*got -2"),
    (lambda: nn.Linear(2.5, 3), r"in_features must be a positive integer.*got 2.5"),
    (lambda: __import__("minidni.dni", fromlist=["Synthesizer"]).Synthesizer(0),
     r"Synthesizer\(0, .*features \(the width of h\) must be a positive integer.*got 0"),
    (lambda: __import__("minidni.dni", fromlist=["Synthesizer"]).Synthesizer(4, 0), r"n_classes must be a positive"),
    (lambda: __import__("minidni.dni", fromlist=["Synthesizer"]).Synthesizer(4, hidden=(8, 0)),
     r"each hidden width must be a positive integer.*got 0"),
])
def test_layer_sizes_must_be_positive_integers(make, what):
    with pytest.raises(ValueError, match=what):
        make()


@pytest.mark.parametrize("a,b,advice", [
    (np.float32, np.uint8, r"convert the uint8 operand to float32 first, e.g. x.astype\(np.float32\)"),
    (np.uint8, np.float32, r"convert the uint8 operand to float32 first, e.g. x.astype\(np.float32\)"),
    (np.float64, np.int64, r"convert the int64 operand to float64 first"),
    (np.float32, np.float64, r"the float64 operand with x.astype\(np.float32\)"),
])
def test_mixed_dtype_advice_converts_to_the_float_side(a, b, advice):
    with pytest.raises(TypeError, match=r"add: mixed dtypes.*" + advice) as err:
        t((3,), a) + t((3,), b)
    assert "astype(np.uint8)" not in str(err.value) and "astype(np.int64)" not in str(err.value)

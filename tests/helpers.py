"""Shared helpers for the engine tests: gradient checks, array layouts, hypothesis settings.

Two gradient checks, both in float64 (HIPS autograd's habits, see /work/shared/STYLE.md):

  gradcheck       the whole Jacobian by central differences, (f(x + eps e_j) - f(x - eps e_j)) / 2 eps for every
                  element j of every input, against the Jacobian that backward() builds one output element at a time.
  jvp_vjp_check   <u, J v> by central differences along a random direction v against <J^T u, v> from one backward
                  pass with a random upstream gradient u: one number that involves every entry of J.

Both take `fn(*tensors) -> Tensor` and a list of NumPy arrays. The arrays are passed to the analytic pass exactly
as given (so a transposed or strided input stays non-contiguous) and copied for the finite differences.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings

from minidni import Tensor

# small and fast: the machine has two cores shared with other workers
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _wrt(inputs, wrt):
    if wrt is None:
        return [k for k, a in enumerate(inputs) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    return list(wrt)


def _tensors(inputs, wrt):
    return [Tensor(a, requires_grad=(k in wrt)) if isinstance(a, np.ndarray) else a for k, a in enumerate(inputs)]


def _value(fn, inputs, wrt):
    """fn evaluated on fresh leaves, as a float64 array."""
    out = fn(*_tensors(inputs, wrt))
    return np.array(out.data, dtype=np.float64, copy=True)  # a copy: out may be a view of an input


def numerical_jacobian(fn, inputs, wrt, eps):
    """J[k] of shape (out.size, inputs[k].size): column j is the central difference along element j of input k."""
    jac = {}
    for k in wrt:
        x = np.array(inputs[k], copy=True, order="C")  # contiguous copy, safe to perturb in place
        flat = x.reshape(-1)
        step = x.dtype.type(eps)
        cols = []
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + step
            plus = _value(fn, [x if i == k else a for i, a in enumerate(inputs)], wrt)
            flat[j] = orig - step
            minus = _value(fn, [x if i == k else a for i, a in enumerate(inputs)], wrt)
            flat[j] = orig
            # divide by the step actually taken (it differs from 2 eps when x +- eps rounds)
            taken = np.float64(orig + step) - np.float64(orig - step)
            cols.append(((plus - minus) / taken).reshape(-1))
        jac[k] = np.stack(cols, axis=1) if cols else np.zeros((0, 0))
    return jac


def analytic_jacobian(fn, inputs, wrt):
    """J[k] built row by row: backward with the i-th unit vector as upstream gradient gives row i."""
    tensors = _tensors(inputs, wrt)
    out = fn(*tensors)
    rows = {k: [] for k in wrt}
    for i in range(out.data.size):
        e = np.zeros(out.shape, dtype=out.dtype)
        e.reshape(-1)[i] = 1
        for k in wrt:
            tensors[k].grad = None
        out.backward(e, retain_graph=True)
        for k in wrt:
            g = tensors[k].grad
            if g is not None:
                assert g.shape == inputs[k].shape, f"grad of input {k} has shape {g.shape}, input {inputs[k].shape}"
                assert g.dtype == inputs[k].dtype, f"grad of input {k} is {g.dtype}, input {inputs[k].dtype}"
            rows[k].append(np.zeros(inputs[k].size) if g is None else np.asarray(g, np.float64).reshape(-1))
    return {k: np.stack(r, axis=0) for k, r in rows.items()}, out


def gradcheck(fn, inputs, eps=1e-6, rtol=1e-5, atol=1e-7, wrt=None):
    """Full central-difference Jacobian of fn at `inputs` against backward(), for every element of every input.

    Returns the output Tensor of the analytic pass (for further checks).
    """
    wrt = _wrt(inputs, wrt)
    assert wrt, "gradcheck: no floating-point input to differentiate"
    analytic, out = analytic_jacobian(fn, inputs, wrt)
    numeric = numerical_jacobian(fn, inputs, wrt, eps)
    for k in wrt:
        np.testing.assert_allclose(analytic[k], numeric[k], rtol=rtol, atol=atol,
                                   err_msg=f"Jacobian with respect to input {k} (shape {inputs[k].shape})")
    # the output of the (possibly non-contiguous) inputs equals the output of their contiguous copies
    np.testing.assert_allclose(np.asarray(out.data, np.float64),
                               _value(fn, [np.array(a, copy=True, order="C") if isinstance(a, np.ndarray) else a
                                           for a in inputs], wrt), rtol=1e-12, atol=1e-14)
    return out


def jvp_vjp_check(fn, inputs, rng, eps=1e-6, rtol=1e-5, atol=1e-7, wrt=None, u=None, v=None):
    """<u, J v> by central differences along v equals <J^T u, v> from one backward pass with upstream gradient u.

    u and v default to standard normal directions (v: one per differentiated input).
    """
    wrt = _wrt(inputs, wrt)
    tensors = _tensors(inputs, wrt)
    out = fn(*tensors)
    if u is None:
        u = rng.standard_normal(out.shape)
    u = np.asarray(u, dtype=out.dtype)
    if v is None:
        v = {k: rng.standard_normal(inputs[k].shape).astype(inputs[k].dtype) for k in wrt}
    out.backward(u)
    vjp = sum(float(np.sum(np.asarray(tensors[k].grad, np.float64) * v[k]))
              for k in wrt if tensors[k].grad is not None)
    step = {k: inputs[k].dtype.type(eps) * v[k] for k in wrt}
    plus = _value(fn, [a + step[k] if k in wrt else a for k, a in enumerate(inputs)], wrt)
    minus = _value(fn, [a - step[k] if k in wrt else a for k, a in enumerate(inputs)], wrt)
    jvp = float(np.sum(u.astype(np.float64) * (plus - minus))) / (2 * eps)
    scale = max(1.0, float(np.linalg.norm(u)) * max(float(np.linalg.norm(v[k])) for k in wrt))
    assert abs(jvp - vjp) <= atol * scale + rtol * max(abs(jvp), abs(vjp)), \
        f"<u, J v> = {jvp!r} (finite differences) but <J^T u, v> = {vjp!r} (backward)"
    return jvp, vjp


# ---- array layouts -----------------------------------------------------------------------------------------------------
LAYOUTS = ("contiguous", "transposed", "strided")


def with_layout(a, layout):
    """The same values as `a` in another memory layout: C-contiguous, reversed-axes storage, or a strided view."""
    a = np.asarray(a)
    if layout == "contiguous" or a.ndim == 0:
        return np.ascontiguousarray(a)
    if layout == "transposed":
        out = np.ascontiguousarray(a.transpose()).transpose()  # Fortran order for 2-D
    elif layout == "strided":
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        out = view
    else:
        raise ValueError(layout)
    assert np.array_equal(out, a)
    return out


def away_from(x, point=0.0, gap=0.05):
    """Push entries of x at least `gap` away from `point` (a kink such as relu's 0), keeping their side."""
    d = x - point
    return point + np.where(d >= 0, 1.0, -1.0) * (np.abs(d) + gap)


def assert_close(actual, expected, dtype, what=""):
    """Compare at a tolerance fit for the dtype, relative to the size of the values (so a sum that cancels to ~0 is
    judged against the magnitude of what was summed): float64 to 1e-12, float32 to 1e-5 (~80 ulps)."""
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol, atol=tol * scale, err_msg=what)


def exit_code(argv):
    """minidni.cli.main(argv)'s exit status, whether it returns it or argparse raises SystemExit."""
    from minidni.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code

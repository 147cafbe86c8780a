"""Optimizers: SGD with momentum, and Adam. Each update is one fused kernel per parameter (`kernels.*_step_`).

    opt = Adam(model.parameters(), lr=1e-3)
    loss.backward(); opt.step(); opt.zero_grad()

`lr` is a plain attribute, so a schedule can change it between steps. `state_dict()` / `load_state_dict()` carry the
step counts and moment buffers, so a resumed run continues bit-identically. A parameter whose `grad` is None is
skipped by `step()`: nothing about it changes, and Adam counts steps PER PARAMETER for its bias correction, as
torch.optim.Adam does (`steps[k]` is how many updates parameter k has had; `t` counts calls to step()).
The state (momentum buffers, Adam's moments) lives where its parameter lives: built on the parameters' device, and
moved with them -- `step()` moves a buffer whose parameter went to another device (`model.to("cuda")`), and
`optimizer.to(device)` does it at once. state_dict() holds NumPy arrays on the host, from any device.
Jaderberg et al. 2016 train every feed-forward model (and the synthesizers) with Adam (Sec. 3.3, appendix A).
"""
from __future__ import annotations

import numpy as np

from .device import CPU, device_of, get_device, move


class _Cast:
    """The step's scalars cast to a parameter's dtype (float32 loops must get float32 constants), once per dtype."""

    def __init__(self, *values):
        self.values, self.cast = values, {}

    def __call__(self, dtype):
        out = self.cast.get(dtype)
        if out is None:
            out = self.cast[dtype] = tuple(dtype.type(v) for v in self.values)
        return out


def _zeros_like(array):
    """Zeros of array's shape and dtype, on array's device."""
    dev = device_of(array, CPU)
    return np.zeros_like(array) if dev is CPU else dev.zeros(array.shape, array.dtype)


class Optimizer:
    def __init__(self, params, lr):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for k, p in enumerate(params):
            if not getattr(p, "requires_grad", False):
                raise TypeError(f"{type(self).__name__}: parameter {k} ({type(p).__name__}) does not require grad")
            if not device_of(p.data, CPU).is_contiguous(p.data):
                raise ValueError(f"{type(self).__name__}: parameter {k} is not contiguous; updates are in place")
        if lr < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        self.params, self.lr, self.t = params, lr, 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def to(self, device):
        """Move the state buffers to `device` (where the parameters should be too); returns self."""
        dev = get_device(device)
        for bufs in self._buffers().values():
            for k, b in enumerate(bufs):
                bufs[k] = move(b, dev)
        return self

    def _placed(self, k, p):
        """(device of parameter k, its buffers), the buffers moved first if the parameter moved since."""
        dev = device_of(p.data, CPU)
        bufs = self._buffers()
        for lst in bufs.values():
            lst[k] = move(lst[k], dev)
        return dev, [lst[k] for lst in bufs.values()]

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _buffers(self):
        return {}

    def state_dict(self):
        state = {"t": np.asarray(self.t), "lr": np.asarray(self.lr)}
        for name, bufs in self._buffers().items():
            for k, b in enumerate(bufs):
                state[f"{name}.{k}"] = b.copy() if device_of(b, CPU) is CPU else device_of(b).host_copy(b)
        return state

    def load_state_dict(self, state):
        own = {f"{name}.{k}": b for name, bufs in self._buffers().items() for k, b in enumerate(bufs)}
        missing = [k for k in ["t", "lr", *own] if k not in state]
        unexpected = [k for k in state if k not in own and k not in ("t", "lr")]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys "
                           f"{unexpected} (a state from another optimizer, or for other parameters?)")
        for key, b in own.items():  # np.copyto would broadcast or cast silently: check first, then copy
            value = np.asarray(state[key])
            if value.shape != b.shape or value.dtype != b.dtype:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key} has shape {b.shape} and dtype "
                                 f"{b.dtype} here, but the state holds shape {value.shape}, dtype {value.dtype}")
        self.t, self.lr = int(state["t"]), float(state["lr"])
        for key, b in own.items():
            device_of(b, CPU).copy_from_host(b, state[key])


class SGD(Optimizer):
    """p -= lr * g, with optional momentum (buf = mu buf + g; step along buf, or g + mu buf for Nesterov)."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.buf = [_zeros_like(p.data) for p in self.params]

    def _buffers(self):
        return {"buf": self.buf}

    def step(self):
        self.t += 1
        hyper = _Cast(self.lr, self.momentum, self.weight_decay)
        for k, p in enumerate(self.params):
            if p.grad is None:
                continue
            dev, (buf,) = self._placed(k, p)
            dev.kernels.sgd_step_(p.data, p.grad, buf, *hyper(p.data.dtype), self.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as PyTorch writes it; see kernels.reference.adam_step_ for the update.

    Bias correction uses each parameter's own step count n_k:  bias1 = 1 - beta1^n_k,  bias2 = 1 - beta2^n_k,
    with n_k advanced only when parameter k has a gradient. (One global count would over-correct a parameter that
    joins late: with grads None for its first 5 steps, its first update would use 1 - 0.9^6 instead of 1 - 0.9.)

    state_dict: {"t", "lr", "steps" (int64, one per parameter), "m.k", "v.k"}. A state saved before per-parameter
    counting has no "steps": every parameter then resumes at the single global count t, which is exactly what that
    older optimizer would have used next.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.m = [_zeros_like(p.data) for p in self.params]
        self.v = [_zeros_like(p.data) for p in self.params]
        self.steps = [0] * len(self.params)

    def _buffers(self):
        return {"m": self.m, "v": self.v}

    def state_dict(self):
        return {**super().state_dict(), "steps": np.asarray(self.steps, dtype=np.int64)}

    def load_state_dict(self, state):
        state = dict(state)
        steps = state.pop("steps", None)
        if steps is not None:
            steps = np.asarray(steps)
            if steps.shape != (len(self.params),) or steps.dtype.kind not in "iu" or (steps < 0).any():
                raise ValueError(f"Adam.load_state_dict: steps must hold one count >= 0 per parameter, shape "
                                 f"({len(self.params)},), got shape {steps.shape}, dtype {steps.dtype}")
        super().load_state_dict(state)                 # checks the rest; a refused state changes nothing
        self.steps = [int(n) for n in steps] if steps is not None else [self.t] * len(self.params)

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        hyper = _Cast(self.lr, b1, b2, self.eps, self.weight_decay)
        bias = {}                                      # (n, dtype) -> (1 - b1^n, 1 - b2^n) in that dtype
        for k, p in enumerate(self.params):
            if p.grad is None:                         # skipped: its step count does not advance
                continue
            dev, (m, v) = self._placed(k, p)
            self.steps[k] = n = self.steps[k] + 1
            dtype = p.data.dtype
            if (n, dtype) not in bias:
                bias[n, dtype] = (dtype.type(1 - b1 ** n), dtype.type(1 - b2 ** n))
            lr, beta1, beta2, eps, weight_decay = hyper(dtype)
            dev.kernels.adam_step_(p.data, p.grad, m, v, lr, beta1, beta2, eps, *bias[n, dtype], weight_decay)

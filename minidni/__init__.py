"""minidni: a from-scratch NumPy/Numba engine for Decoupled Neural Interfaces (Jaderberg et al. 2016).

    import minidni as md
    x = md.Tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum(); y.backward(); x.grad   # -> [[2., 4.]]

Modules: tensor (Tensor), autograd (Function, backward, no_grad), ops (differentiable ops), kernels (NumPy reference
and Numba CPU backends), nn (layers), optim (SGD, Adam).
"""
from . import kernels, nn, ops, optim
from .autograd import Function, detect_anomaly, is_grad_enabled, no_grad
from .kernels import get_backend, set_backend, use_backend
from .tensor import Tensor, tensor

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "Function", "no_grad", "detect_anomaly", "is_grad_enabled", "kernels", "ops", "nn",
           "optim", "get_backend", "set_backend", "use_backend"]

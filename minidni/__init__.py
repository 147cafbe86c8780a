"""minidni: a from-scratch NumPy/Numba engine for Decoupled Neural Interfaces (Jaderberg et al. 2016).

    import minidni as md
    x = md.Tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum(); y.backward(); x.grad   # -> [[2., 4.]]

Modules: tensor (Tensor), autograd (Function, backward, no_grad), ops (differentiable ops), kernels (NumPy reference
and Numba CPU backends), nn (layers), optim (SGD, Adam), memory (the allocator policy applied at import: freed large
blocks are kept for the next step; MINIDNI_KEEP_FREED_MEMORY=0 turns it off).
"""
from . import memory

memory._apply_at_import()

from . import kernels, nn, ops, optim  # noqa: E402
from .autograd import Function, detect_anomaly, is_grad_enabled, no_grad  # noqa: E402
from .kernels import get_backend, set_backend, use_backend  # noqa: E402
from .tensor import Tensor, tensor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "Function", "no_grad", "detect_anomaly", "is_grad_enabled", "kernels", "ops", "nn",
           "optim", "get_backend", "set_backend", "use_backend"]

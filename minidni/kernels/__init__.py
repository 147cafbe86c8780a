"""Kernel backends behind one interface.

`reference` (NumPy, the specification) and `cpu` (Numba) define the same functions with the same signatures.
`minidni.ops` always calls `kernels.active.<name>(...)`, so switching backends changes no other code.

The default is Numba; set the environment variable `MINIDNI_BACKEND=numpy` before starting Python, or call
`minidni.kernels.set_backend("numpy")` at run time (and `"numba"` to go back). A MINIDNI_BACKEND that names no backend
does not stop `import minidni`; the first kernel call (or `check_environment()`, which the `minidni` command calls
first) raises a ValueError that says so.
"""
import os

from . import reference

BACKENDS = ("numba", "numpy")
active = reference


def get_backend() -> str:
    """The name of the active backend: 'numba' or 'numpy'."""
    return active.NAME


def set_backend(name: str):
    """Make `name` ('numba' or 'numpy') the backend every op uses from now on; returns the previous name."""
    global active
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)} "
                         "(set by MINIDNI_BACKEND or minidni.kernels.set_backend)")
    previous = getattr(active, "NAME", None) if not isinstance(active, _UnknownBackend) else "numba"
    if name == "numba":
        from . import cpu  # imported only when chosen: numba's import costs ~0.3 s

        active = cpu
    else:
        active = reference
    return previous


class use_backend:
    """Context manager: `with use_backend("numpy"): ...` runs the block on that backend, then restores the old one."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self._previous = set_backend(self.name)
        return self

    def __exit__(self, *exc):
        set_backend(self._previous)
        return False


class _UnknownBackend:
    """Stands in for a backend while MINIDNI_BACKEND names none: any use raises the error that explains it (so that
    `import minidni` itself never fails, and the `minidni` command can say it in one line)."""

    def __init__(self, message):
        self.message = message

    def __getattr__(self, name):
        raise ValueError(self.message)


def check_environment():
    """Raise the ValueError that says what is wrong when MINIDNI_BACKEND names no backend; do nothing otherwise."""
    if isinstance(active, _UnknownBackend):
        raise ValueError(active.message)


_env = os.environ.get("MINIDNI_BACKEND", "numba").strip().lower() or "numba"
if _env in BACKENDS:
    set_backend(_env)
else:
    active = _UnknownBackend(f"the environment variable MINIDNI_BACKEND={_env!r} names no kernel backend: set it to "
                             f"one of {', '.join(BACKENDS)}, or unset it (default: numba)")

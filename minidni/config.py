"""Experiment settings as plain dataclasses: print them, save them as TOML, override them from a TOML file or the command
line, and get a clear error for a misspelt key or a value out of range.

    @dataclass
    class MyConfig(TrainConfig):
        layers: int = param(3, "number of layers", ge=3, le=6)

    cfg = MyConfig()                                   # validated on construction
    cfg = override(cfg, {"layers": 4}, source="--layers")
    cfg = override(cfg, load_toml("my.toml"), source="my.toml")
    print(to_toml(cfg))

Each field carries its rule in `metadata` (`help`, `choices`, bounds `ge`/`gt`/`le`), so the dataclass itself is the
single description of a setting: its type, default, meaning and valid range. Every construction (including
`dataclasses.replace`) runs `__post_init__`, so an invalid config cannot exist. Files are flat `key = value` TOML.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None


class ConfigError(ValueError):
    """A setting that does not exist, or a value of the wrong type or out of range."""


def param(default, help, *, choices=None, ge=None, gt=None, le=None):  # noqa: A002 - `help` reads best here
    """A dataclass field with its description and valid values: choices, or bounds ge (>=), gt (>), le (<=)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "ge": ge, "gt": gt, "le": le}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def new_default(base, name, default):
    """`base`'s field `name` (its help, choices and bounds) with another default: for a config that only changes the
    default of a setting it inherits, so the description is written once.

        lr: float = new_default(TrainConfig, "lr", 3e-4)
    """
    fields = {f.name: f for f in dataclasses.fields(base)}
    if name not in fields:
        raise ConfigError(f"new_default: {base.__name__} has no setting {name!r}; its settings: {', '.join(fields)}")
    meta = fields[name].metadata
    return param(default, meta["help"], choices=meta["choices"], ge=meta["ge"], gt=meta["gt"], le=meta["le"])


# ---- checking one value ------------------------------------------------------------------------------------------------
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _type_name(tp):
    if typing.get_origin(tp) is tuple:
        return f"a list of {_TYPE_NAMES[typing.get_args(tp)[0]].split(' ', 1)[1]}s"
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp, value):
    """`value` as type `tp`, accepting only lossless conversions (int -> float, list -> tuple); None if impossible."""
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            return None
        item_type = typing.get_args(tp)[0]
        items = [_coerce(item_type, v) for v in value]
        return None if any(v is None for v in items) else tuple(items)
    if tp is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):  # True is an int in Python, but never a valid count or rate
        return None
    if tp is int:
        return value if isinstance(value, int) else None
    if tp is float:
        return float(value) if isinstance(value, (int, float)) else None
    if tp is str:
        return value if isinstance(value, str) else None
    return value


def _range_text(meta):
    lo, hi = meta.get("ge"), meta.get("le")
    if isinstance(lo, int) and isinstance(hi, int) and hi - lo <= 10:  # a few integers: name them all
        return "one of " + ", ".join(str(v) for v in range(lo, hi + 1))
    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {meta['gt']}")
    if meta.get("ge") is not None:
        parts.append(f">= {meta['ge']}")
    if meta.get("le") is not None:
        parts.append(f"<= {meta['le']}")
    return " and ".join(parts)


def _check_value(cls_name, f, tp, value):
    """The value converted to the field's type; ConfigError naming the field, what it expects and what it got."""
    meta = f.metadata
    about = f"  ({f.name}: {meta['help']})" if meta.get("help") else ""
    converted = _coerce(tp, value)
    if converted is None:
        raise ConfigError(f"{cls_name}.{f.name} must be {_type_name(tp)}; got {value!r} "
                          f"({type(value).__name__}).{about}")
    items = converted if isinstance(converted, tuple) else (converted,)
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{cls_name}.{f.name} must be finite; got {value!r}.{about}")
        if meta.get("choices") is not None and item not in meta["choices"]:
            valid = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{cls_name}.{f.name} must be one of {valid}; got {item!r}.{about}")
        lo_ok = (meta.get("ge") is None or item >= meta["ge"]) and (meta.get("gt") is None or item > meta["gt"])
        hi_ok = meta.get("le") is None or item <= meta["le"]
        if not (lo_ok and hi_ok):
            raise ConfigError(f"{cls_name}.{f.name} must be {_range_text(meta)}; got {item!r}.{about}")
    return converted


# ---- the base class ----------------------------------------------------------------------------------------------------------------
@dataclass
class Config:
    """Base of every experiment config: validates each field against its `param(...)` rule, then `check()`."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_value(type(self).__name__, f, hints[f.name], getattr(self, f.name)))
        self.check()

    def check(self):
        """Rules that involve several fields; subclasses extend it (call super().check())."""

    def to_dict(self):
        """{field: value}, with tuples as lists (what JSON and TOML hold)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def __str__(self):
        return to_toml(self)


def field_names(cfg_or_cls):
    return [f.name for f in dataclasses.fields(cfg_or_cls)]


def describe_fields(cfg_or_cls):
    """One line per field: name, type, and its help text with the valid range."""
    cls = cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        rule = _range_text(f.metadata)
        if f.metadata.get("choices") is not None:
            rule = "one of " + ", ".join(repr(c) for c in f.metadata["choices"])
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}{', ' + rule if rule else ''}): "
                     f"{f.metadata.get('help', '')}")
    return "\n".join(lines)


def override(cfg, values, source="overrides"):
    """A copy of `cfg` with `values` ({field: value}) applied and validated; `source` names where they came from."""
    names = field_names(cfg)
    unknown = [k for k in values if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: {type(cfg).__name__} has no setting {key!r}.{hint} Valid settings:\n"
                          + describe_fields(cfg))
    if not values:
        return cfg
    try:
        return dataclasses.replace(cfg, **values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


# ---- TOML in and out -------------------------------------------------------------------------------------------------
def _require_tomllib():
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError("reading TOML needs Python >= 3.11 (tomllib is in its standard library) "
                          "or, on Python 3.10, the package tomli: pip install tomli")
    return tomllib


def load_toml(path):
    """The {key: value} pairs of a flat TOML file; a ConfigError for a syntax error or a [table]."""
    lib = _require_tomllib()
    try:
        with open(path, "rb") as fh:
            values = lib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; give the path of a TOML file (key = value lines)") from None
    except PermissionError:
        raise ConfigError(f"config file {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file: TOML is UTF-8 text of key = value lines "
                          "(see `minidni show NAME` for one)") from None
    except lib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    tables = [k for k, v in values.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError(f"config file {path}: settings are flat `key = value` lines, but [{tables[0]}] is a table; "
                          "remove the [section] header")
    return values


def parse_value(text):
    """A command-line value read as a TOML value (3, 1e-3, true, [1, 2], "s"), or as a plain string if it is not one."""
    lib = _require_tomllib()
    try:
        return lib.loads(f"v = {text}")["v"]
    except lib.TOMLDecodeError:
        return text


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"to_toml: cannot write {value!r} ({type(value).__name__})")


def to_toml(cfg, header=None):
    """The config as flat TOML text, one `key = value` per line with its help as a comment; load_toml reads it back."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    rows = [(f"{f.name} = {_toml_value(getattr(cfg, f.name))}", f.metadata.get("help", ""))
            for f in dataclasses.fields(cfg)]
    width = max((len(r) for r, _ in rows), default=0)
    lines += [f"{r:<{width}}  # {h}" if h else r for r, h in rows]
    return "\n".join(lines) + "\n"


# ---- the settings every training run has ---------------------------------------------------------------------------------------
@dataclass
class TrainConfig(Config):
    """What the Trainer reads: length of the run, optimiser step size and its decay, evaluation, logging, checkpoints."""

    seed: int = param(0, "seeds parameter initialisation and the order of batches", ge=0)
    backend: str = param("numba", "kernel backend", choices=("numba", "numpy"))
    device: str = param("cpu", "where tensors live and ops run: 'cpu', or 'cuda' (an NVIDIA GPU, minidni.kernels.gpu; "
                               "without one, NUMBA_ENABLE_CUDASIM=1 runs it on numba's slow simulator)",
                        choices=("cpu", "cuda"))
    epochs: int = param(1, "passes over the training set (used when steps = 0)", ge=0)
    steps: int = param(0, "train this many steps instead of `epochs` (0: use epochs)", ge=0)
    batch_size: int = param(256, "examples per training step", ge=2)
    lr: float = param(1e-3, "learning rate of Adam", gt=0.0)
    lr_gamma: float = param(1.0, "multiply lr by this at each decay point (1.0: no decay)", gt=0.0, le=1.0)
    lr_decay_every: int = param(0, "decay lr every this many steps (0: use lr_milestones, else lr_decay_at)", ge=0)
    lr_milestones: tuple[int, ...] = param((), "steps at which lr is decayed (used when lr_decay_every = 0)", ge=1)
    lr_decay_at: tuple[float, ...] = param((), "fractions of the run at which lr is decayed, e.g. [0.5, 0.75]: they "
                                               "move with --steps / --epochs (used when lr_decay_every = 0 and "
                                               "lr_milestones = [])", gt=0.0, le=1.0)
    eval_every: int = param(0, "evaluate on validation every this many steps (0: see eval_count)", ge=0)
    eval_count: int = param(0, "evaluate on validation this many times, evenly over the run (used when eval_every = 0;"
                               " 0: at the end of each epoch)", ge=0)
    eval_test: bool = param(False, "also evaluate on test at every evaluation, for curves (never tune on it)")
    eval_batch_size: int = param(1000, "examples per evaluation batch", ge=1)
    log_every: int = param(50, "write a training record to metrics.jsonl every this many steps", ge=1)
    checkpoint_every: int = param(1000, "save checkpoint.npz every this many steps (0: only at the end and on Ctrl-C)",
                                  ge=0)
    diverge_factor: float = param(100.0, "stop the run as diverged when a step's training loss is not finite, or above "
                                         "this many times the mean loss of its first 10 steps (0: only non-finite)",
                                  ge=0.0)

    def check(self):
        super().check()
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError(f"{type(self).__name__}: set steps > 0 or epochs > 0, otherwise there is nothing to train")
        if self.lr_decay_every and self.lr_milestones:
            raise ConfigError(f"{type(self).__name__}: set either lr_decay_every ({self.lr_decay_every}) or "
                              f"lr_milestones ({list(self.lr_milestones)}), not both")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)):
            raise ConfigError(f"{type(self).__name__}.lr_milestones must be increasing; got {list(self.lr_milestones)}")
        if list(self.lr_decay_at) != sorted(set(self.lr_decay_at)):
            raise ConfigError(f"{type(self).__name__}.lr_decay_at must be increasing; got {list(self.lr_decay_at)}")

"""The registry of experiments: a name -> a one-line description, a config dataclass, and a run function.

    minidni list                       # what is registered
    minidni run mnist-fcn-bprop        # EXPERIMENTS["mnist-fcn-bprop"].run(config, out_dir, ...)

Adding an experiment is one module with three things, then one import line at the bottom of this file:

    @dataclass
    class MyConfig(TrainConfig):                      # the settings: defaults, help text, valid ranges
        layers: int = param(3, "number of layers", ge=3, le=6)

    @register("my-experiment", "one line saying what it reproduces", MyConfig)
    def run(config, out_dir, *, resume=False, quiet=False, hooks=()):
        ...build data, model, learner...
        return Trainer(learner, batches, config, out_dir, ...).fit(resume=resume)   # -> the summary dict
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str            # one line, shown by `minidni list`
    config: Callable            # the config dataclass (called with no arguments: the defaults)
    run: Callable               # run(config, out_dir, *, resume=False, quiet=False, hooks=()) -> summary dict


EXPERIMENTS: dict[str, Experiment] = {}


def register(name, description, config):
    """Decorator: add the decorated run function to the registry under `name`."""

    def add(run):
        if name in EXPERIMENTS:
            raise ValueError(f"register: an experiment named {name!r} exists already")
        EXPERIMENTS[name] = Experiment(name, description, config, run)
        return run

    return add


def names():
    return sorted(EXPERIMENTS)


def get(name) -> Experiment:
    """The experiment called `name`; a KeyError listing the registered names otherwise."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose one of: {', '.join(names())} (see `minidni list`)")
    return EXPERIMENTS[name]


from . import feedforward, mnist_dni, mnist_fcn  # noqa: E402,F401  (register their experiments)
from . import copy_rnn  # noqa: E402,F401  (Copy / Repeat Copy: truncated BPTT, DNI, DNI + Aux)
from . import two_timescale  # noqa: E402,F401  (two networks at two timescales: end to end, DNI, no gradient)
from . import ptb  # noqa: E402,F401  (Penn Treebank characters: truncated BPTT, DNI, DNI + Aux)

"""Decoupled Neural Interfaces for feed-forward networks (Jaderberg et al. 2016; ICML 2017).

    synthesizer.py   Synthesizer M(h [, y]) -> g_hat (linear or MLP, DNI or cDNI); ConvSynthesizer; Oracle (true grad)
    interface.py     Interface: M_i + its optimizer; the local module updates; gradient_agreement
    net.py           DNINet (modules + interfaces + schedule; a Trainer learner), mlp_modules, mnist_fcn
    schedules.py     update schedules as data: Event, locked / dni / stochastic / delayed / pipelined, check, grids
    runner.py        Runner (sequential, step by step) and ConcurrentRunner (a worker thread per module, bit-identical)
    trace.py         Trace of a run and draw_timeline (schedule by tick, run by wall-clock time)
    unlock.py        complete unlock: synthetic inputs I(x) and the unlocked schedule

A first run:

    from minidni import dni
    net = dni.mnist_fcn(layers=4, synthesizer="linear", conditioned=True)      # cDNI after every hidden layer
    print(dni.schedules.pipelined().grid(n_batches=3, n_modules=len(net)))
    runner = dni.Runner(net, dni.schedules.pipelined(), batches)                # batches: list of (x, y)
    runner.run(); print(runner.losses())
"""
from . import schedules
from .interface import Interface, gradient_agreement
from .net import DNINet, adam, make_synthesizer, mlp_modules, mnist_fcn, split_sequential
from .runner import ConcurrentRunner, Runner
from .schedules import Event, check, delayed, dni, locked, pipelined, stochastic
from .synthesizer import ConvSynthesizer, Oracle, Synthesizer, one_hot
from .trace import Trace, draw_timeline
from .unlock import SyntheticInput, add_synthetic_inputs, unlocked

__all__ = ["schedules", "Interface", "gradient_agreement", "DNINet", "adam", "make_synthesizer", "mlp_modules",
           "mnist_fcn", "split_sequential", "Runner", "ConcurrentRunner", "Event", "check", "locked", "dni",
           "stochastic", "delayed", "pipelined", "unlocked", "Oracle", "Synthesizer", "ConvSynthesizer", "one_hot",
           "Trace", "draw_timeline", "SyntheticInput", "add_synthetic_inputs"]

"""Decoupled Neural Interfaces for feed-forward networks (Jaderberg et al. 2016; ICML 2017).

    synthesizer.py   Synthesizer M(h [, y]) -> g_hat (linear or MLP, DNI or cDNI); ConvSynthesizer; Oracle (true grad)
    interface.py     Interface: M_i + its optimizer; the local module updates; gradient_agreement
    net.py           DNINet (modules + interfaces + schedule; a Trainer learner), mlp_modules, mnist_fcn
    schedules.py     update schedules as data: Event, locked / dni / stochastic / delayed / pipelined, check, grids
    runner.py        Runner (sequential, step by step) and ConcurrentRunner (a worker thread per module, bit-identical)
    trace.py         Trace of a run and draw_timeline (schedule by tick, run by wall-clock time)
    unlock.py        complete unlock: synthetic inputs I(x) and the unlocked schedule
    ray_runner.py    RayRunner: a Ray actor per module, on one machine or a cluster; checkpoints and restores
                     (Ray is optional: pip install minidni[distributed]; docs/distributed.md)
    simulate.py      simulate(schedule, costs, n_workers, link): a schedule on N workers joined by a link, in time;
                     profile_costs measures the costs with a Runner; Link(latency, bandwidth)

Recurrent (temporal) DNI, arXiv v1 Sec. 3.2:
    recurrent_synthesizer.py  RecurrentSynthesizer M(h_t) -> [g_h, g_c] (used as 0.1 M); RecurrentOracle (given grads)
    boundary.py      the cut: start leaves, inject scale * M(h_T) at the window's end, the bootstrapped target
    aux.py           AuxHead: the core predicts the synthetic gradient T steps ahead
    tbptt.py         the truncated-BPTT schedule as data: tbptt(T, "bptt" | "dni" | "dni-aux")
    recurrent_runner.py  RecurrentLearner: runs that schedule on an LSTM, one event at a time
    bits.py          the bit loss and bit errors per output step of Copy / Repeat Copy

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
from .ray_runner import RayRunner          # imports Ray only when a RayRunner is made
from .schedules import Event, check, delayed, dni, locked, pipelined, stochastic
from .synthesizer import ConvSynthesizer, Oracle, Synthesizer, one_hot
from .trace import Trace, draw_timeline
from .unlock import SyntheticInput, add_synthetic_inputs, unlocked
from .simulate import Link, Simulation, profile_costs, simulate
from .aux import AuxHead
from .recurrent_runner import RecurrentLearner
from .recurrent_synthesizer import RecurrentOracle, RecurrentSynthesizer
from .tbptt import TruncatedBPTT, tbptt

__all__ = ["schedules", "Interface", "gradient_agreement", "DNINet", "adam", "make_synthesizer", "mlp_modules",
           "mnist_fcn", "split_sequential", "Runner", "ConcurrentRunner", "RayRunner", "Event", "check", "locked", "dni",
           "stochastic", "delayed", "pipelined", "unlocked", "Oracle", "Synthesizer", "ConvSynthesizer", "one_hot",
           "Trace", "draw_timeline", "SyntheticInput", "add_synthetic_inputs",
           "simulate", "Link", "Simulation", "profile_costs",
           "AuxHead", "RecurrentLearner", "RecurrentOracle", "RecurrentSynthesizer", "TruncatedBPTT", "tbptt"]

"""Copy, T=3, with the synthetic gradient replaced by alpha * (true future gradient, full BPTT over the episode at the
batch's starting parameters). alpha=1: full BPTT (up to the per-window updates); alpha=0.1: the paper's scale on a
perfect M. usage: oracle.py OUT alpha steps"""
import sys, json; sys.path.insert(0, __import__('os').path.dirname(__file__))
import numpy as np, diag_sg as d
from minidni import experiments
from minidni.config import override
from minidni.experiments.copy_rnn import build_learner, Curriculum
from minidni.dni.recurrent_synthesizer import RecurrentOracle
from minidni.dni.bits import bit_errors
out, alpha, steps = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
cfg = override(experiments.get('copy-dni').config(), {'T': 3})
L = build_learner(cfg, 'dni')
L.synth_optimizer = None
cur = Curriculum('copy'); rng = np.random.default_rng([0, 1]); H = cfg.hidden
fh = open(out, 'w'); w = s_ = 0; prev = 0
for step in range(1, steps + 1):
    b = cur.batch(64, rng, 8)
    g, _ = d.true_future_grads(L, b.inputs, b.targets, b.mask, 3)
    L.synthesizer = RecurrentOracle({k * 3: (alpha * g[k][:, :H], alpha * g[k][:, H:]) for k in g if k > 0})
    o = L.train_episode(b.inputs, b.targets, b.mask)
    wr, sc = bit_errors(o['logits'], b.targets, b.mask); w += wr; s_ += sc
    cur.observe(wr, sc)
    if step % 50 == 0:
        rec = {'step': step, 'N': cur.level[0], 'bits': w / s_, 'max_length': cur.max_solved()[0]}
        fh.write(json.dumps(rec) + '\n'); fh.flush(); w = s_ = 0

"""run_copy with a hook: every `every` steps, cosine and norm ratio of the used synthetic gradient scale*M(h_k)
against the true future gradient dL_{>=k}/ds_k (full BPTT over the episode), on a fixed probe batch at the current
level (N, and R for Repeat Copy). usage: pilot.py OUT every [name=copy-dni|repeat-copy-dni|...] key=value ..."""
import sys, json; sys.path.insert(0, __import__('os').path.dirname(__file__))
import numpy as np, diag_sg as d
from minidni import experiments
from minidni.config import override, parse_value
from minidni.experiments.copy_rnn import run_copy, Curriculum
from minidni.tensor import Tensor
from minidni.autograd import no_grad
out, every = sys.argv[1], int(sys.argv[2])
name = 'copy-dni'
vals = {}
for kv in sys.argv[3:]:
    k, v = kv.split('=', 1)
    if k == 'name': name = v; continue
    vals[k] = parse_value(v)
cfg = override(experiments.get(name).config(), vals)
log = open(out + '.diag.jsonl', 'w')
def hook(step, cur, L):
    if step % every or L.synthesizer is None: return
    N, R = cur.level
    if N < 2: return
    c2 = Curriculum(cfg.task); c2.state['N'], c2.state['R'] = N, R
    b = c2.batch(64, np.random.default_rng(1234), cfg.width)
    g, s = d.true_future_grads(L, b.inputs, b.targets, b.mask, cfg.T)
    rec = {'step': step, 'N': N} if cfg.task == 'copy' else {'step': step, 'N': N, 'R': R}
    for k in sorted(g):
        if k == 0: continue
        with no_grad():
            used = L.synthesizer.scale * L.synthesizer(Tensor(s[k][0])).data
        rec[f'cos{k}'] = round(d.cos(used, g[k]), 4)
        rec[f'ratio{k}'] = round(float(np.linalg.norm(used) / np.linalg.norm(g[k])), 4)
    log.write(json.dumps(rec) + '\n'); log.flush()
method = next(m for m in ('dni-aux', 'dni', 'bptt') if name.endswith(m))
run_copy(cfg, out, method, name, quiet=True, hooks=[hook])

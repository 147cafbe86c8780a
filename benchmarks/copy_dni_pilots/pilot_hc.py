"""Like pilot.py, but the synthesizer reads [h, c] (2H inputs) instead of h: a variant outside the package for candidate (d)."""
import sys, json; sys.path.insert(0, __import__('os').path.dirname(__file__))
import numpy as np, diag_sg as d
from minidni import experiments, nn, ops
from minidni.config import override, parse_value
from minidni.experiments import copy_rnn
from minidni.dni.recurrent_runner import RecurrentLearner
from minidni.dni.recurrent_synthesizer import RecurrentSynthesizer
from minidni.dni.boundary import inject, arrived_gradient, synthesizer_loss
from minidni.tensor import Tensor
from minidni.autograd import no_grad

class SynthHC(RecurrentSynthesizer):
    def __init__(self, H, hidden=None, scale=0.1, dtype=np.float32, rng=None):
        nn.Module.__init__(self)
        self.hidden_size, self.scale = int(H), float(scale)
        self.hidden = (H,) if hidden is None else tuple(hidden)
        self.net = nn.mlp(2 * H, self.hidden, 2 * H, batch_norm=False, dtype=dtype, rng=nn._rng(rng))
        self.net[-1].weight.data[...] = 0; self.net[-1].bias.data[...] = 0
    def forward(self, hc):
        return self.net(hc)
    def synthetic_gradient(self, hc, t=None):
        with no_grad():
            g = self.net(Tensor(hc)).data * self.scale
        H = self.hidden_size
        return g[:, :H], g[:, H:]

class LearnerHC(RecurrentLearner):
    def _backward(self, event, store, synthetic):
        k = event.batch
        h0, c0, h, c, loss = store.pop(("graph", k))
        total = loss
        if synthetic:
            g_h, g_c = self.synthesizer.synthetic_gradient(np.concatenate([h.data, c.data], 1))
            self.episode["synthetic"][k] = (g_h, g_c)
            total = loss + inject(h, c, g_h, g_c)
        total.backward(retain_graph=self.schedule.keeps_graph)
        if self.schedule.synthetic:
            store[("target", k)] = arrived_gradient(h0, c0)
    def _do_train_synth(self, event, store):
        k = event.batch
        target = store.pop(("target", k))
        self.episode["target"][k] = target
        hc = Tensor(np.concatenate(store[("state", k)], 1))
        loss = synthesizer_loss(self.synthesizer(hc), target, self.synthesizer.scale, self.scale_target, self.synth_loss)
        self.synth_optimizer.zero_grad(); loss.backward(); self.synth_optimizer.step()
        self.episode["synth_loss"][k] = loss.item()

orig_build = copy_rnn.build_learner
def build(config, method):
    L = orig_build(config, method)
    synth = SynthHC(config.hidden, scale=config.scale, rng=np.random.default_rng(config.seed + 7))
    from minidni.optim import Adam
    return LearnerHC(L.core, L.readout, L.schedule, synth, None, optimizer=lambda ps: Adam(ps, lr=config.lr),
                     synth_optimizer=lambda ps: Adam(ps, lr=config.synth_lr or config.lr), scale_target=config.scale_target)
copy_rnn.build_learner = build

out, every = sys.argv[1], int(sys.argv[2])
vals = {k: parse_value(v) for k, v in (kv.split('=', 1) for kv in sys.argv[3:])}
cfg = override(experiments.get('copy-dni').config(), vals)
log = open(out + '.diag.jsonl', 'w')
def hook(step, cur, L):
    if step % every: return
    N = cur.level[0]
    if N < 2: return
    c2 = copy_rnn.Curriculum('copy'); c2.state['N'] = N
    b = c2.batch(64, np.random.default_rng(1234), cfg.width)
    g, s = d.true_future_grads(L, b.inputs, b.targets, b.mask, cfg.T)
    rec = {'step': step, 'N': N}
    for k in sorted(g):
        if k == 0: continue
        with no_grad():
            used = L.synthesizer.scale * L.synthesizer(Tensor(np.concatenate(s[k], 1))).data
        rec[f'cos{k}'] = round(d.cos(used, g[k]), 4)
        rec[f'ratio{k}'] = round(float(np.linalg.norm(used) / np.linalg.norm(g[k])), 4)
    log.write(json.dumps(rec) + '\n'); log.flush()
copy_rnn.run_copy(cfg, out, 'dni', 'copy-dni', quiet=True, hooks=[hook])

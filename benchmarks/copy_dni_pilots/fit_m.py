"""Fixed core from a checkpoint; train a fresh RecurrentSynthesizer on the TRUE future gradient at s_k (k>=1), Adam,
and report held-out cosine of M(h) with g."""
import sys; sys.path.insert(0, __import__('os').path.dirname(__file__))
import numpy as np, diag_sg as d
from minidni.experiments.copy_rnn import Curriculum
from minidni.dni.recurrent_synthesizer import RecurrentSynthesizer
from minidni.dni.boundary import synthesizer_loss
from minidni.optim import Adam
from minidni.tensor import Tensor
from minidni.autograd import no_grad
run, N, lr, steps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cfg, L, meta = d.load(run)
cur = Curriculum('copy'); cur.state['N'] = N
rng = np.random.default_rng(11)
test = cur.batch(64, np.random.default_rng(999), 8)
gt, st = d.true_future_grads(L, test.inputs, test.targets, test.mask, cfg.T)
M = RecurrentSynthesizer(64, scale=1.0, rng=np.random.default_rng(0))
opt = Adam(M.parameters(), lr=lr)
for i in range(steps + 1):
    if i % max(steps // 5, 1) == 0:
        with no_grad():
            cs = [d.cos(M(Tensor(st[k][0])).data, gt[k]) for k in sorted(gt) if k > 0]
        print(f"lr {lr} step {i}: held-out cos per boundary {np.round(cs, 3)}", flush=True)
    b = cur.batch(64, rng, 8)
    g, s = d.true_future_grads(L, b.inputs, b.targets, b.mask, cfg.T)
    for k in sorted(g):
        if k == 0: continue
        loss = synthesizer_loss(M(Tensor(s[k][0])), g[k], 1.0, True)
        opt.zero_grad(); loss.backward(); opt.step()

"""Diagnostic: compare the synthetic gradient scale*M(h_k) used at each boundary with the true future gradient
dL_{>=k}/ds_k (exact, by a backward sweep over the episode's windows), for a checkpoint of copy-dni."""
import sys, json
import numpy as np

from minidni import experiments, ops
from minidni.config import load_toml, override
from minidni.tensor import Tensor
from minidni.autograd import no_grad
from minidni.dni.boundary import start_leaves, inject
from minidni.experiments.copy_rnn import build_learner, _load, Curriculum

def load(run_dir, name="copy-dni"):
    exp = experiments.get(name)
    cfg = exp.config(**{k: v for k, v in load_toml(f"{run_dir}/config.toml").items()}) if False else None
    vals = load_toml(f"{run_dir}/config.toml")
    cfg = exp.config()
    cfg = override(cfg, vals)
    learner = build_learner(cfg, "dni")
    meta, state = _load(f"{run_dir}/checkpoint.npz")
    learner.load_state_dict(state)
    return cfg, learner, meta

def true_future_grads(learner, inputs, targets, mask, T):
    """g[k] = dL_{>=k}/d s_k for window starts k>=1, as (B, 2H); also the states s_k."""
    n = inputs.shape[0]; B = inputs.shape[1]; H = learner.hidden_size
    K = -(-n // T)
    states = [(np.zeros((B, H), np.float32), np.zeros((B, H), np.float32))]
    with no_grad():
        for k in range(K):
            t0, t1 = k * T, min((k + 1) * T, n)
            h0, c0 = Tensor(states[-1][0]), Tensor(states[-1][1])
            _, (h, c) = learner.core([Tensor(inputs[t]) for t in range(t0, t1)], state=(h0, c0))
            states.append((h.data, c.data))
    g = {}
    nxt = None
    for k in reversed(range(K)):
        t0, t1 = k * T, min((k + 1) * T, n)
        h0, c0 = start_leaves(states[k])
        outs, (h, c) = learner.core([Tensor(inputs[t]) for t in range(t0, t1)], state=(h0, c0))
        logits = learner.readout(ops.concat(outs, axis=0))
        logits = ops.reshape(logits, (t1 - t0, B, logits.shape[1]))
        loss = learner.loss(logits, targets[t0:t1], mask[t0:t1])
        total = loss if nxt is None else loss + inject(h, c, nxt[:, :H], nxt[:, H:])
        total.backward()
        gk = np.concatenate([h0.grad if h0.grad is not None else np.zeros((B, H), np.float32),
                             c0.grad if c0.grad is not None else np.zeros((B, H), np.float32)], axis=1)
        g[k] = gk; nxt = gk
    for p in learner.parameters():
        p.grad = None
    return g, states

def cos(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

def report(run_dir, N, T=None, seed=123, name="copy-dni"):
    cfg, learner, meta = load(run_dir, name)
    T = T or cfg.T
    cur = Curriculum("copy"); cur.state["N"] = N
    b = cur.batch(cfg.batch_size, np.random.default_rng(seed), cfg.width)
    g, states = true_future_grads(learner, b.inputs, b.targets, b.mask, T)
    H = learner.hidden_size; sc = learner.synthesizer.scale
    rows = []
    for k in sorted(g):
        if k == 0: continue
        h = states[k][0]
        with no_grad():
            M = learner.synthesizer(Tensor(h)).data
        used = sc * M
        gt = g[k]
        rows.append(dict(k=k, t=k*T, cos_used_true=cos(used, gt), cos_h=cos(used[:, :H], gt[:, :H]),
                         cos_c=cos(used[:, H:], gt[:, H:]),
                         norm_used=float(np.linalg.norm(used)), norm_true=float(np.linalg.norm(gt)),
                         norm_true_h=float(np.linalg.norm(gt[:, :H])), norm_true_c=float(np.linalg.norm(gt[:, H:])),
                         rel_err=float(np.linalg.norm(used - gt) / np.linalg.norm(gt)),
                         # best achievable per-batch linear fit from h (least squares) as an upper reference
                         ))
    return dict(run=run_dir, step=meta["step"], N=N, T=T, rows=rows)

if __name__ == "__main__":
    run_dir = sys.argv[1]; N = int(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "copy-dni"
    r = report(run_dir, N, name=name)
    print(f"{r['run']} step {r['step']} N={r['N']} T={r['T']}")
    for row in r["rows"]:
        print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

def predictability(run_dir, N, name="copy-dni", n_fit=20, seed=7):
    """Held-out R^2 / cosine of a least-squares linear map [h_k, 1] -> true g_k (also from [h, c]), fit on n_fit batches."""
    cfg, learner, meta = load(run_dir, name)
    T = cfg.T
    cur = Curriculum("copy"); cur.state["N"] = N
    rng = np.random.default_rng(seed)
    X, Xc, Y = {}, {}, {}
    for i in range(n_fit + 1):
        b = cur.batch(cfg.batch_size, rng, cfg.width)
        g, states = true_future_grads(learner, b.inputs, b.targets, b.mask, T)
        for k in g:
            if k == 0: continue
            X.setdefault(k, []).append(states[k][0]); Xc.setdefault(k, []).append(np.concatenate(states[k], 1))
            Y.setdefault(k, []).append(g[k])
    out = {}
    for k in X:
        for nm, XX in (("h", X[k]), ("hc", Xc[k])):
            A = np.concatenate(XX[:-1]); A = np.concatenate([A, np.ones((len(A), 1), A.dtype)], 1)
            Yf = np.concatenate(Y[k][:-1])
            W, *_ = np.linalg.lstsq(A.astype(np.float64), Yf.astype(np.float64), rcond=None)
            At = np.concatenate([XX[-1], np.ones((len(XX[-1]), 1), XX[-1].dtype)], 1)
            P = At @ W; Yt = Y[k][-1]
            out[(k, nm)] = dict(cos=cos(P, Yt), r2=float(1 - ((P - Yt) ** 2).sum() / ((Yt - Yt.mean(0)) ** 2).sum()),
                                rel_err=float(np.linalg.norm(P - Yt) / np.linalg.norm(Yt)))
    return out

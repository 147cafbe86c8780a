"""The cost of one training window of the ptb-* experiments (minidni/experiments/ptb.py) at their default size, for
each cell of `minidni table rnn`'s PTB grid: BPTT at T = 2, 3, 4, 5, 8, 20, DNI and DNI + Aux at T = 2..5.

Each cell: the learner of the experiment (`build_learner`), `--windows` windows of real PTB text after 10 of
warm-up, timed by the wall clock and by this process's CPU time (`time.process_time`: on a shared machine the time
spent descheduled by other jobs is not counted, so it estimates a quiet machine). Then the whole grid's training
time at `train_chars` characters a run. Run it with one BLAS thread, as the grid runs:

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 python benchmarks/ptb_step_time.py [--windows 60]
"""
import argparse
import time

from minidni.config import override
from minidni.data.ptb import BPTTIterator, load_ptb_chars
from minidni.experiments import get
from minidni.experiments.ptb import build_learner, one_hot
from minidni.table_rnn import PTB_GRID


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. --set hidden=128")
    args = parser.parse_args()
    corpus = load_ptb_chars()
    V = len(corpus.vocab)
    sets = {k: eval(v) for k, v in (s.split("=", 1) for s in args.set)}  # noqa: S307 - numbers only, a dev script
    total_wall = total_cpu = 0.0
    for method, Ts in PTB_GRID.items():
        for T in Ts:
            cfg = override(get(f"ptb-{method}").config(), {**sets, "T": T})
            learner = build_learner(cfg, method, V)
            learner.start_stream(cfg.batch_size)
            it = BPTTIterator(corpus.train, cfg.batch_size, T, drop_last=True)
            for k in range(10 + args.windows):
                if k == 10:
                    wall, cpu = time.perf_counter(), time.process_time()
                x, y = it.window_at(k)
                learner.train_window(one_hot(x, V), y, None)
            wall = (time.perf_counter() - wall) / args.windows
            cpu = (time.process_time() - cpu) / args.windows
            steps = cfg.total_steps()
            total_wall += steps * wall
            total_cpu += steps * cpu
            print(f"ptb-{method:7s} T={T:2d}: {1e3 * wall:6.1f} ms wall, {1e3 * cpu:6.1f} ms CPU per window; "
                  f"{steps:6d} windows -> {steps * cpu / 60:5.1f} min CPU", flush=True)
    print(f"the grid at {cfg.train_chars:,} characters a run, LSTM {cfg.hidden}, {cfg.batch_size} rows: "
          f"{total_wall / 3600:.2f} h by the wall clock, {total_cpu / 3600:.2f} h of CPU (training only)")


if __name__ == "__main__":
    main()

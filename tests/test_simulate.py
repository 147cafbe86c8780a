"""The schedule simulator (dni/simulate.py): hand-checkable layouts, transfer costs, byte counts, the profiling pass,
the drawing."""
import math

import numpy as np
import pytest

from minidni import dni
from minidni.dni import schedules as S
from minidni.dni.simulate import Link, activation_bytes, tensor_bytes, transfer_bytes

# seconds per event kind: distinct values, so a wrong sum shows
COSTS = {"forward": 1.0, "update_synthetic": 0.75, "update_true": 2.0, "train_synth": 0.5, "backprop": 1.5}
SCHEDULES = [S.locked(), S.dni(), S.pipelined(), S.stochastic(0.5, seed=3), S.delayed(2)]


def total_cost(schedule, n_batches, n_modules):
    return sum(COSTS[e.kind] for e in schedule.events(n_batches, n_modules))


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_one_worker_makespan_is_the_sum_of_the_costs(schedule):
    sim = dni.simulate(schedule, COSTS, n_workers=1, n_modules=3, n_batches=6)
    assert sim.makespan == pytest.approx(total_cost(schedule, 6, 3))
    assert sim.busy == {0: pytest.approx(sim.makespan)} and sim.transfers == []
    assert sim.trace.overlap() == 0.0
    with_dispatch = dni.simulate(schedule, COSTS, n_workers=1, n_modules=3, n_batches=6, dispatch=0.125)
    n_events = len(schedule.events(6, 3))
    assert with_dispatch.makespan == pytest.approx(sim.makespan + 0.125 * n_events)


def test_locked_chain_on_two_workers_never_overlaps():
    """Backprop's update locking: with each module on its own worker, one is always waiting for the other."""
    sim = dni.simulate(S.locked(), COSTS, n_workers=2, n_modules=2, n_batches=5)
    assert sim.trace.overlap() == 0.0
    assert sim.makespan == pytest.approx(total_cost(S.locked(), 5, 2))    # 5 x (F0 + F1 + L1 + B0) = 5 x 5.5
    assert sim.per_batch == pytest.approx(5.5)
    assert sim.busy[0] + sim.busy[1] == pytest.approx(sim.makespan)


def test_pipelined_overlaps_and_runs_at_the_busiest_workers_pace():
    """Worker 0 per batch: F0 + U0 + S0 = 2.25 s; worker 1: F1 + L1 = 3 s: the pipeline runs at 3 s a batch."""
    sim = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12)
    assert sim.per_batch == pytest.approx(3.0)
    assert sim.trace.overlap() > 0.5 * sim.makespan
    assert sim.busy == {0: pytest.approx(12 * 2.25), 1: pytest.approx(12 * 3.0)}
    assert sim.makespan < total_cost(S.pipelined(), 12, 2)


def test_shared_cores_bound_the_time_per_batch():
    """cores=C: per batch at least (busy of every worker + background per tick) / C. Pipelined, 2 modules: the
    workers do 2.25 + 3 = 5.25 s a batch, so on 2 cores the timeline's 3 s stands until the background is large."""
    n_ticks = len({e.tick for e in S.pipelined().events(12, 2)})
    free = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12)
    quiet = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12, cores=2)
    assert quiet.cpu_bound == pytest.approx(5.25 / 2) and quiet.per_batch == pytest.approx(3.0)
    busy = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12, cores=2, background=1.5)
    assert busy.cpu_bound == pytest.approx((12 * 5.25 + 1.5 * n_ticks) / (12 * 2))
    assert busy.per_batch == pytest.approx(busy.cpu_bound) and busy.per_batch > 3.0
    assert busy.dataflow_per_batch == pytest.approx(free.per_batch)       # the timeline itself is unchanged
    one = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12, cores=1)
    assert one.per_batch == pytest.approx(5.25)                           # two workers on one core: no overlap
    assert "the shared cores' bound" in str(busy) and "the shared cores' bound" not in str(free)
    with pytest.raises(ValueError, match="cores must be >= 1"):
        dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, cores=0)


def test_dni_dataflow_overlaps_but_the_tick_barrier_does_not():
    """dni on two workers: module 1's work on batch b overlaps module 0's update (F0 + F1 + L1 + S0 = 4.5 s a batch);
    the ConcurrentRunner's barrier after each tick serialises it (F0U0 | F1L1 | S0F0U0: 2 + ... = 5.25 s), and a
    tick overhead is paid once per tick."""
    flow = dni.simulate(S.dni(), COSTS, n_workers=2, n_modules=2, n_batches=10)
    assert flow.per_batch == pytest.approx(1.0 + 3.0 + 0.5)
    tick = dni.simulate(S.dni(), COSTS, n_workers=2, n_modules=2, n_batches=10, sync="tick")
    assert tick.per_batch == pytest.approx(1.0 + 0.75 + 3.0 + 0.5)
    slow = dni.simulate(S.dni(), COSTS, n_workers=2, n_modules=2, n_batches=10, sync="tick", tick_overhead=0.01)
    ticks = len({e.tick for e in S.dni().events(10, 2)})
    assert slow.makespan == pytest.approx(tick.makespan + 0.01 * (ticks - 1))


def test_a_transfer_costs_exactly_latency_plus_bytes_over_bandwidth():
    """One batch of locked backprop on two workers: h_0 goes up, dh_0 comes down; each delays by latency + B/bw."""
    nbytes = activation_bytes(batch=8, widths=[16])                      # 8 x 16 float32 = 512 bytes
    assert nbytes[("h", 0)] == nbytes[("dh", 0)] == 512
    link = Link(latency=0.25, bandwidth=1024.0)                          # 0.25 s + 512 / 1024 s = 0.75 s a message
    sim = dni.simulate(S.locked(), COSTS, n_workers=2, n_modules=2, n_batches=1, link=link, nbytes=nbytes)
    free = dni.simulate(S.locked(), COSTS, n_workers=2, n_modules=2, n_batches=1)
    assert [t.key[0] for t in sim.transfers] == ["h", "dh"]
    assert all(t.arrive - t.start == pytest.approx(0.75) for t in sim.transfers)
    assert sim.makespan == pytest.approx(free.makespan + 2 * 0.75)
    assert link.seconds(512) == pytest.approx(0.75) and sim.comm_seconds == pytest.approx(1.5)
    same_worker = dni.simulate(S.locked(), COSTS, n_workers=1, n_modules=2, n_batches=1, link=link, nbytes=nbytes)
    assert same_worker.makespan == pytest.approx(free.makespan) and same_worker.transfers == []


def test_a_worker_sends_one_message_at_a_time():
    """Two messages leave worker 0 at once (h_0 of two batches, with a zero-cost update between): the second waits
    for the first to finish sending; latency overlaps."""
    costs = {"forward": 1.0, "update_synthetic": 0.0, "update_true": 0.0, "train_synth": 0.0}
    link = Link(latency=10.0, bandwidth=1.0)                              # 2 bytes: 2 s on the wire, then 10 s
    sim = dni.simulate(S.pipelined(), costs, n_workers=2, n_modules=2, n_batches=2, link=link,
                       nbytes=activation_bytes(1, [1], dtype=np.float16))
    ups = [t for t in sim.transfers if t.key[0] == "h"]
    assert [t.start for t in ups] == [1.0, 3.0]                          # F0(1) ends at 2, the link is free at 3
    assert [t.arrive for t in ups] == [13.0, 15.0]


def test_per_call_cost_is_paid_once_per_worker_and_tick():
    """Pipelined, module 0 runs F, U, S in one call per tick; module 1 F, L: a per-call cost adds to each call once."""
    plain = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12)
    calls = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=12, per_call=0.25)
    assert calls.busy[1] == pytest.approx(plain.busy[1] + 12 * 0.25)      # one call per batch on worker 1
    assert calls.per_batch == pytest.approx(3.25)
    n_calls = len({(e.module, e.tick) for e in S.pipelined().events(12, 2)})
    assert sum(calls.busy.values()) == pytest.approx(sum(plain.busy.values()) + 0.25 * n_calls)


def test_link_gbit_and_submit_bound():
    link = Link.gbit(10, latency=1e-4)
    assert link.bandwidth == 1.25e9 and link.seconds(1.25e6) == pytest.approx(1e-3 + 1e-4)
    assert "10 Gbit/s" in str(link) and str(Link()) == "free link"
    # a driver that takes 10 s per call: the events cannot start faster than one every 10 s
    sim = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=4, submit=10.0)
    n = len(S.pipelined().events(4, 2))
    assert sim.makespan >= 10.0 * n
    with pytest.raises(ValueError, match="latency must be >= 0"):
        Link(latency=-1.0)


def test_byte_counts_follow_the_shapes():
    assert tensor_bytes((256, 784)) == 256 * 784 * 4 and tensor_bytes((3, 5), np.float64) == 120
    net = dni.mnist_fcn(layers=3, hidden=12, in_features=20, n_classes=4, seed=0)
    x = np.zeros((7, 20), np.float32)
    nbytes = transfer_bytes(net, x)
    assert nbytes == {(name, i): 7 * 12 * 4 for name in ("h", "dh", "true_dh") for i in (0, 1)}
    assert nbytes == activation_bytes(7, [12, 12])


def tiny_batches(n, batch=16, d=10, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((batch, d), dtype=np.float32), rng.integers(0, 3, batch)) for _ in range(n)]


@pytest.mark.parametrize("schedule", [S.locked(), S.dni(), S.pipelined(), S.stochastic(0.5, seed=1)], ids=repr)
def test_profile_gives_a_cost_for_every_event_kind(schedule):
    """The profiling pass runs the real net with a Runner and averages every (kind, module)'s duration; what it
    returns simulates the same schedule without a missing entry."""
    net = dni.mnist_fcn(layers=3, hidden=8, in_features=10, n_classes=3, seed=0)
    prof = dni.profile_costs(net, schedule, tiny_batches(4), n_batches=3, warmup=1)
    wanted = {(e.kind, e.module) for b in range(1, 4) for e in schedule.batch_events(b, 3)}
    assert wanted <= set(prof.costs) and all(s > 0 for s in prof.costs.values())
    assert prof.overhead >= 0 and prof.nbytes[("h", 0)] == 16 * 8 * 4
    assert "module 0" in str(prof)
    sim = dni.simulate(schedule, prof, n_workers=3, link=Link.gbit(1), n_batches=4)
    assert sim.makespan > 0 and len(sim.trace) == len(schedule.events(4, 3))
    with pytest.raises(ValueError, match="needs warmup"):
        dni.profile_costs(net, schedule, tiny_batches(2), n_batches=3, warmup=1)


def test_the_simulation_prints_and_draws(tmp_path):
    sim = dni.simulate(S.pipelined(), COSTS, n_workers=2, n_modules=2, n_batches=4, link=Link(0.1, 1e4),
                       nbytes=activation_bytes(4, [64]))
    text = str(sim)
    assert "pipelined()" in text and "worker 1 (modules [1])" in text and "per batch" in text
    fig = sim.draw(tmp_path / "sim.png")
    assert (tmp_path / "sim.png").stat().st_size > 1000 and len(fig.axes[0].lines) == len(sim.transfers)


def test_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="no cost for 'backprop' of module 0"):
        dni.simulate(S.locked(), {"forward": 1.0, "update_true": 1.0}, n_modules=2)
    with pytest.raises(ValueError, match="placement must give each of the 2 modules"):
        dni.simulate(S.dni(), COSTS, n_workers=2, n_modules=2, placement=[0, 2])
    with pytest.raises(ValueError, match="no entry"):
        dni.simulate(S.dni(), COSTS, n_workers=2, n_modules=2, link=Link.gbit(1))
    with pytest.raises(ValueError, match="pass n_modules"):
        dni.simulate(S.dni(), COSTS)
    assert math.isinf(Link().bandwidth)

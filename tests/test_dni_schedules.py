"""Update schedules as data: deterministic, seeded, frequencies that match p_update, a data flow that is safe to run
on one thread per module, and printable / drawable."""

import numpy as np
import pytest

from minidni.dni import schedules as S
from minidni.dni import trace, unlocked
from minidni.dni.schedules import Event

ALL = [S.locked(), S.dni(), S.stochastic(0.5, seed=3), S.delayed(2), S.pipelined(), unlocked()]


@pytest.mark.parametrize("schedule", ALL, ids=repr)
@pytest.mark.parametrize("target", ["bootstrap", "true"])
def test_data_flow_is_tick_safe(schedule, target):
    """Every read comes from an earlier tick, or from the same worker earlier in the tick (schedules.check)."""
    for n_modules in (1, 2, 4):
        events = schedule.events(6, n_modules, target)
        assert S.check(events) == len(events)
        assert [e.tick for e in events] == sorted(e.tick for e in events)


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_schedules_are_deterministic_and_streamable(schedule):
    """The same list twice; and batch b's events do not depend on how many batches are planned, with nondecreasing
    first ticks -- what lets a runner stream an endless batch source."""
    assert schedule.events(5, 3) == schedule.events(5, 3)
    assert all(e in schedule.events(9, 3) for e in schedule.events(5, 3) if e.batch < 5)
    firsts = [schedule.first_tick(b, 3) for b in range(8)]
    assert firsts == sorted(firsts)


def test_every_module_updates_exactly_once_per_batch_in_the_full_schedules():
    for schedule in (S.locked(), S.dni(), S.delayed(1), S.pipelined(), unlocked()):
        events = schedule.events(4, 3)
        for b in range(4):
            updates = sorted(e.module for e in events
                             if e.batch == b and e.kind in ("update_synthetic", "update_true", "backprop"))
            assert updates == [0, 1, 2], schedule


def test_stochastic_is_seeded_and_its_update_frequency_matches_p():
    n_batches, n_modules = 3000, 3
    assert S.stochastic(0.3, seed=1).events(20, 3) == S.stochastic(0.3, seed=1).events(20, 3)
    assert S.stochastic(0.3, seed=1).events(20, 3) != S.stochastic(0.3, seed=2).events(20, 3)
    for p in (0.2, 0.7):
        events = S.stochastic(p, seed=5).events(n_batches, n_modules)
        sd = np.sqrt(n_batches * p * (1 - p))
        for m in range(n_modules):
            n_updates = sum(e.module == m and e.kind.startswith("update") for e in events)
            assert abs(n_updates - p * n_batches) < 5 * sd, (p, m, n_updates)
            assert sum(e.module == m and e.kind == "forward" for e in events) == n_batches
        # a bootstrapped target exists only when module i+1 updated: M_i trains exactly then
        for b in range(50):
            up = S.stochastic(p, seed=5).updates(b, n_modules)
            trained = {e.module for e in events if e.batch == b and e.kind == "train_synth"}
            assert trained == {i for i in range(n_modules - 1) if up[i + 1]}
    assert all(e.kind != "update_synthetic" for e in S.stochastic(0.0).events(10, 3))
    assert S.stochastic(1.0).events(6, 3) == S.dni().events(6, 3)


def test_delayed_trains_each_synthesizer_k_batches_late():
    k, M = 2, 3
    events = S.delayed(k).events(8, M)
    order = {(e.kind, e.module, e.batch): n for n, e in enumerate(events)}
    for b in range(4):
        for i in range(M - 1):
            assert order[("forward", i, b + k)] < order[("train_synth", i, b)] < order[("forward", i, b + k + 1)]
    assert S.delayed(0).events(5, M) == S.dni().events(5, M)
    assert not S.delayed(1).per_batch and S.delayed(0).per_batch


def test_pipelined_module_i_works_on_batch_tick_minus_i():
    for e in S.pipelined().events(5, 4):
        if e.kind in ("forward", "update_synthetic", "update_true"):
            assert e.batch == e.tick - e.module


def test_check_finds_a_same_tick_race():
    race = [Event("forward", 0, 0, 0, (("batch", 0),), (("h", 0, 0), ("graph", 0, 0))),
            Event("forward", 1, 0, 0, (("batch", 0), ("h", 0, 0)), (("graph", 1, 0),))]
    with pytest.raises(ValueError, match="same tick"):
        S.check(race)
    with pytest.raises(ValueError, match="no earlier event"):
        S.check(race[1:])


def test_events_print_and_grids_read_like_the_paper_figures():
    e = S.dni().events(1, 2)[0]
    assert str(e) == "tick   0 | module 0 | forward          | batch 0" and e.short == "F0"
    assert "batch=0" in repr(e) and "reads" not in repr(e)
    grid = S.pipelined().grid(3, 3)
    rows = {line.split()[1]: line for line in grid.splitlines() if line.startswith("module")}
    assert rows["0"].split()[2:4] == ["F0U0", "F1U1"]          # module 0 starts batch 1 while module 1 has batch 0
    assert "F0L0" in rows["2"]
    text = S.locked().describe(1, 2, io=True)
    assert "update_true" in text and "writes dh[0,0]" in text
    with pytest.raises(ValueError, match="kind"):
        Event("jump", 0, 0, 0)


def test_timeline_png(tmp_path):
    path = tmp_path / "pipelined.png"
    fig = S.pipelined().draw(4, 3, path=path)
    assert path.stat().st_size > 1000 and fig.axes[0].get_xlabel() == "tick"
    fig = trace.draw_timeline(S.locked().events(2, 3), path=tmp_path / "locked.png", title="locked")
    assert (tmp_path / "locked.png").exists()

"""RayRunner (minidni/dni/ray_runner.py): each module in its own Ray actor, bit-identical to Runner(blas_threads=1) on
every deterministic schedule; modules pinned to the nodes of a 2-node cluster; an actor killed mid-run and restored
from a checkpoint; the CLI's --runner ray, --address and --resume after a killed driver; the errors.

One Ray cluster serves the whole module: two nodes on 127.0.0.1 (ray.cluster_utils.Cluster), one CPU and one custom
resource ("node0", "node1") each, dashboard off, its files under a short temporary folder (Unix socket paths must stay
under ~107 characters) that is also HOME (Ray 2.60 writes an auth token under ~/.ray). Loopback only: Ray turns
127.0.0.1 into the machine's outward address unless ENABLE_RAY_CLUSTER is off, so the fixture turns it off. At the
end the cluster is shut down and the test checks that no process it started is left.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install minidni[distributed]")
psutil = pytest.importorskip("psutil", reason="psutil (installed with Ray) checks that no process is left behind")

from minidni.cli import main  # noqa: E402
from minidni.dni import DNINet, Oracle, Runner, Synthesizer, adam, mlp_modules, schedules as S, unlocked  # noqa: E402
from minidni.dni import ray_runner  # noqa: E402
from minidni.dni.ray_runner import RayRunner  # noqa: E402
from minidni.dni.unlock import add_synthetic_inputs  # noqa: E402
from minidni.train import CHECKPOINT, METRICS, SUMMARY, read_checkpoint  # noqa: E402

IN, HIDDEN, CLASSES, BATCH = 12, 8, 4, 16


def _ours(root):
    """Processes of this test's Ray: their command line names its temporary folder."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(root in part for part in (p.info["cmdline"] or [])):
                found.append(p.info["pid"])
        except (psutil.Error, TypeError):
            pass
    return found


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="rr", dir="/tmp")       # short: /tmp/rrXXXXXXXX
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", root)
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")       # for the processes Ray starts
        mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)   # for this one (read at import)
        common = dict(num_cpus=1, include_dashboard=False, node_ip_address="127.0.0.1")
        c = Cluster(initialize_head=True, head_node_args=dict(common, temp_dir=root, resources={"node0": 1}))
        worker = c.add_node(**common, resources={"node1": 1})
        ray.init(address=c.address)
        try:
            yield {"cluster": c, "address": c.address, "root": root, "home": root,
                   "nodes": [c.head_node.node_id, worker.node_id]}
        finally:
            ray.shutdown()
            c.shutdown()
    deadline = time.time() + 20
    while time.time() < deadline:
        left = [p.pid for p in me.children(recursive=True) if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE] + _ours(root)
        if not left:
            break
        time.sleep(0.2)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes left behind by the Ray cluster: {left}"


def make_batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(BATCH, IN)).astype(np.float32), rng.integers(0, CLASSES, BATCH)) for _ in range(n)]


def dni_net(schedule, n_hidden=2, unlock=False):
    """A 3-module net whose MLP synthesizers have batch norm (so a prediction made twice would show)."""
    net = DNINet(mlp_modules(IN, HIDDEN, CLASSES, n_hidden, dtype=np.float32, rng=7),
                 [Synthesizer(HIDDEN, CLASSES, hidden=(16,), dtype=np.float32, rng=10 + i) for i in range(n_hidden)],
                 optimizer=adam(1e-2), schedule=schedule)
    if unlock:
        add_synthetic_inputs(net, IN, rng=5)
    return net


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    sa.pop("dni/batches"), sb.pop("dni/batches")
    assert sa.keys() == sb.keys()
    for key in sa:                                   # parameters, buffers, Adam moments: bit for bit
        assert np.array_equal(sa[key], sb[key]), key


@pytest.mark.parametrize("schedule", [S.pipelined(), S.dni(), S.delayed(2), S.stochastic(0.5, seed=3), unlocked(),
                                      S.locked()], ids=repr)
def test_ray_runner_is_bit_identical_to_the_sequential_runner(cluster, schedule):
    batches = make_batches(8)
    unlock = schedule.name == "unlocked"
    seq_net, ray_net = dni_net(schedule, unlock=unlock), dni_net(schedule, unlock=unlock)
    seq = Runner(seq_net, schedule, batches, blas_threads=1).run()
    with RayRunner(ray_net, schedule, batches, checkpoint_every=3) as runner:
        runner.run()
        assert runner.actor_store_sizes() == [0, 0, 0]           # every actor freed what it held
    assert_same_state(seq_net, ray_net)
    assert seq.log == runner.log and seq.synth_log == runner.synth_log and seq.input_log == runner.input_log
    assert runner.store == {} and runner.events_run == seq.events_run
    assert {s.thread for s in runner.trace.spans} == {f"ray-actor-{k}" for k in range(3)}
    assert runner.checkpoints >= 3 and runner.faults == []


def test_advance_returns_with_ticks_in_flight_and_wait_collects_them(cluster):
    batches = make_batches(8)
    seq_net, ray_net = dni_net(S.pipelined()), dni_net(S.pipelined())
    seq = Runner(seq_net, S.pipelined(), batches, blas_threads=1).run()
    with RayRunner(ray_net, S.pipelined(), batches, checkpoint_every=0, ticks_in_flight=4) as runner:
        runner.advance(6)
        assert 0 < runner.pending_ticks <= 4                  # the driver ran ahead of the actors
        before = runner.events_run
        runner.wait()
        assert runner.pending_ticks == 0 and runner.events_run > before
        assert len(runner.trace.spans) == runner.events_run   # every collected event has its span
        runner.run()
    assert_same_state(seq_net, ray_net)
    assert seq.log == runner.log


@pytest.mark.parametrize("schedule", [S.dni(), S.pipelined()], ids=repr)
def test_a_killed_actor_is_restored_from_the_last_checkpoint(cluster, schedule, caplog):
    """dni: M_i's kept prediction crosses the checkpoint (made again on restore); pipelined: h and dh in flight."""
    batches = make_batches(12)
    seq_net, ray_net = dni_net(schedule), dni_net(schedule)
    seq = Runner(seq_net, schedule, batches, blas_threads=1).run()
    runner = RayRunner(ray_net, schedule, batches, checkpoint_every=4)
    for _ in range(18 if schedule.name == "dni" else 9):      # past the checkpoint at batch 4
        runner.step()
    ray.kill(runner.actors[1])
    with caplog.at_level("WARNING", logger="minidni.dni.ray_runner"):
        runner.run()
    runner.close()
    assert_same_state(seq_net, ray_net)
    assert seq.log == runner.log and seq.synth_log == runner.synth_log   # nothing lost, nothing twice
    (fault,) = runner.faults
    assert fault["module"] == 1 and fault["replaced"] == [1] and fault["restored_to_batch"] == 4
    assert fault["batches_fed_again"] > 0 and runner.restores == 1
    assert "module 1 died" in caplog.text and "restored every actor from the checkpoint at batch 4" in caplog.text


def test_a_dead_actor_without_checkpoints_is_an_error(cluster):
    schedule = S.pipelined()
    runner = RayRunner(dni_net(schedule), schedule, make_batches(6), checkpoint_every=0)
    runner.step()
    ray.kill(runner.actors[0])
    with pytest.raises(RuntimeError, match=r"module 0 died .*no checkpoint to restore from \(checkpoint_every=0\)"):
        runner.run()
    runner.close()
    assert not any(ray_runner._IDLE["actors"].values())     # a runner given up on leaves no actor to reuse


def test_modules_pinned_to_the_nodes_of_a_two_node_cluster(cluster):
    schedule = S.pipelined()
    batches = make_batches(6)
    seq_net, ray_net = dni_net(schedule, n_hidden=1), dni_net(schedule, n_hidden=1)
    Runner(seq_net, schedule, batches, blas_threads=1).run()
    with RayRunner(ray_net, schedule, batches, num_cpus=1, resources=[{"node0": 1}, {"node1": 1}]) as runner:
        runner.run()
        assert [p["node_id"] for p in runner.placement] == cluster["nodes"]       # h and dh crossed nodes
        assert {p["ip"] for p in runner.placement} == {"127.0.0.1"}
    assert_same_state(seq_net, ray_net)


def test_clear_errors(cluster, monkeypatch):
    with pytest.raises(ValueError, match="Oracle synthesizers"):
        RayRunner(DNINet(mlp_modules(IN, HIDDEN, CLASSES, 1, rng=7), [Oracle()]), S.pipelined())
    with pytest.raises(ValueError, match="one dict per module"):
        RayRunner(dni_net(S.dni()), S.dni(), resources=[{"node0": 1}])
    with pytest.raises(ValueError, match="HOST:PORT"):
        ray_runner._host_port("10.0.0.1")
    with pytest.raises(ValueError, match="already connected to the Ray cluster at"):
        ray_runner.connect("127.0.0.1:1")
    with pytest.raises(ConnectionError, match="no Ray cluster answers at 127.0.0.1:1 .*ray start --head"):
        ray_runner.check_reachable("127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "ray", None)                    # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install minidni\[distributed\]$"):
        ray_runner.import_ray()


PIPELINE = ["--steps", "8", "--batch-size", "16", "--quiet", "--set", "eval_every=2", "--set", "hidden=16",
            "--set", "synth_hidden=[8]", "--set", "diagnose_every=0", "--set", "eval_batch_size=5000",
            "--checkpoint-every", "4"]

KILLED_DRIVER = """
import os, signal, sys
from minidni.config import override
from minidni.experiments import get
from minidni.cli import build_parser, make_config
args = build_parser().parse_args(sys.argv[1:])
exp = get(args.name)
def die(state):               # the driver is killed (SIGKILL: no chance to save) at step 6; its last checkpoint: step 4
    if state.step == 6:
        os.kill(os.getpid(), signal.SIGKILL)
exp.run(make_config(args, exp), args.out, quiet=True, hooks=[die])
"""


def numbers(folder):
    rows = [json.loads(line) for line in (Path(folder) / METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "samples_per_s")} for r in rows]


def test_cli_runs_on_a_cluster_and_resumes_a_killed_driver(cluster, tmp_path):
    RayRunner.release_idle_actors()                  # the driver below needs the CPUs they hold
    ray_args = ["--runner", "ray", "--address", cluster["address"]]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["run", "mnist-pipeline", "--out", str(straight), *PIPELINE, *ray_args]) == 0
    summary = json.loads((straight / SUMMARY).read_text())
    assert summary["runner"] == "ray" and summary["steps"] == 8

    env = dict(os.environ, HOME=cluster["home"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    proc = subprocess.run([sys.executable, "-c", KILLED_DRIVER, "run", "mnist-pipeline", "--out", str(split),
                           *PIPELINE, *ray_args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_checkpoint(split / CHECKPOINT)[0]["step"] == 4 and not (split / SUMMARY).exists()
    assert main(["run", "mnist-pipeline", "--out", str(split), "--resume", *ray_args, "--quiet"]) == 0

    _, a = read_checkpoint(straight / CHECKPOINT)
    _, b = read_checkpoint(split / CHECKPOINT)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert numbers(split) == numbers(straight)
    history = json.loads((split / SUMMARY).read_text())["history"]
    assert [h["event"] for h in history] == ["started", "resumed"]

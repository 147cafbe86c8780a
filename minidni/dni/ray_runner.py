"""RayRunner: the update schedules of runner.py with each module in its own Ray actor, on one machine or several
(Jaderberg et al. 2016, Sec. 1-2: decoupled modules need not wait for each other, so they need not share a process).

Usage (Ray is an optional extra: `pip install minidni[distributed]`; the steps for a cluster: docs/distributed.md):

    from minidni import dni
    from minidni.dni.ray_runner import RayRunner
    net = dni.mnist_fcn(layers=3, hidden=256, conditioned=True)
    with RayRunner(net, dni.pipelined(), batches) as runner:    # the arguments of Runner / ConcurrentRunner
        runner.run()                                            # also run(n), step(), flush(), as Runner
    runner.log, runner.synth_log, runner.trace                  # as Runner's; `net` holds the trained state again

    RayRunner(net, schedule, batches, address="10.0.0.1:6379")          # join a running cluster (else: a local Ray)
    RayRunner(..., resources=[{"node0": 1}, {"node1": 1}, ...])          # module k on the node that has resource k
    RayRunner(..., checkpoint_every=0)                                   # no checkpoints (for timing runs)

Actors.  Actor k owns module k, the synthesizer M_k on its output, the synthetic-input model I_k on its input and
their optimizers; every event with `module == k` runs there, through the sequential runner's own `_do_<kind>`
methods. The driver walks the schedule exactly as Runner does and submits every call itself, one call per actor and
tick: Ray keeps the order of calls per submitter only, so a single submitter keeps each actor's events in the
schedule's order. The driver never waits for a tick: a call's inputs are ObjectRefs to outputs of earlier calls (h
from the actor below, dh from the one above), so an actor starts as soon as its inputs exist, and in the pipelined
schedule all actors work at once. What one actor writes and another reads leaves it as an ObjectRef; the rest (the
autograd graph of its forward pass, its own h) stays in its local store. The driver's `store` maps keys (as in
schedules.py) to ObjectRefs; entries are freed after their last reader, here and in the actors.

Bit for bit.  Each actor runs BLAS on one thread and uses the driver's kernel backend, and it sees exactly the values
Runner would show it, so the parameters equal those of Runner(..., blas_threads=1). Refused, as in ConcurrentRunner:
target="true", Oracle synthesizers and diagnostics (they run the modules above).

Faults.  Every `checkpoint_every` batches, at a tick with no autograd graph in flight (in the decoupled schedules:
any tick), the driver gathers every actor's state -- parameters, buffers, optimizer moments, the arrays of its local
store -- with its own bookkeeping, and again at the end of each run(). When an actor dies (ray.kill, a lost node), the
runner replaces it, loads that checkpoint into every actor (the new one and the survivors), feeds again the batches
fed since, and goes on: a deterministic schedule ends with the parameters of an uninterrupted run. `faults` and a
logged warning say what happened. A killed driver is resumed from the experiment's own checkpoint (`minidni run ...
--resume`).
"""
from __future__ import annotations

import collections
import heapq
import logging
import os
import pickle
import socket
import time

import numpy as np

from .runner import ConcurrentRunner, Runner, blas_threads_limit, reads_other_modules
from .schedules import key_str
from .trace import Span

logger = logging.getLogger(__name__)
INSTALL = "pip install minidni[distributed]"
_IDLE = {}      # the Ray session, the actor class, and {(num_cpus, resources): actors} closed runners left idle


def import_ray():
    """The ray module, or an ImportError of one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"RayRunner needs Ray, which is not installed: {INSTALL}") from None
    return ray


def connect(address=None):
    """Join the Ray cluster at `address` ("HOST:PORT", the head's GCS port, 6379 by default), or start a local Ray
    when address is None. A Ray already initialised in this process is used as it is (then `address` must be its)."""
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and _same_address(address, current) is False:
            raise ValueError(f"RayRunner: this process is already connected to the Ray cluster at {current}, not "
                             f"{address}; call ray.shutdown() first, or leave the address out")
        return ray
    if address in (None, "local"):
        start_local_ray()
        return ray
    if address != "auto":
        check_reachable(address)
    ray.init(address=address, log_to_driver=False)
    return ray


def start_local_ray(num_cpus=None, temp_dir=None):
    """Start a new Ray on this machine that listens on 127.0.0.1 only (a local Ray needs no outward address).

    Ray 2.60 replaces a node_ip_address of 127.0.0.1 by the machine's outward address unless its cluster mode is off
    (ray_constants.ENABLE_RAY_CLUSTER, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import): we turn it off for this
    process and, through the environment, for the processes Ray starts. Stop it with ray.shutdown()."""
    ray = import_ray()
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    options = dict(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    if temp_dir is not None:
        options["_temp_dir"] = str(temp_dir)
    ray.init(**options)
    return ray


def check_reachable(address):
    """Raise a ConnectionError that says what to do unless something listens at HOST:PORT (5 s at most)."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"RayRunner: no Ray cluster answers at {address} ({err.strerror or err}); start its "
                              f"head with `ray start --head --node-ip-address {host} --port {port}`, or check the "
                              "address (the head prints it)") from None


def _host_port(address):
    host, colon, port = str(address).rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"RayRunner: address must be HOST:PORT (the Ray head's address, e.g. 10.0.0.1:6379), got "
                         f"{address!r}")
    return host, int(port)


def _same_address(a, b):
    """False when two HOST:PORT addresses surely differ (names are resolved); None when that cannot be told."""
    try:
        (ha, pa), (hb, pb) = _host_port(a), _host_port(b)
        return pa == pb and socket.gethostbyname(ha) == socket.gethostbyname(hb)
    except (ValueError, OSError):
        return None


def _own(value):
    """A private, writable copy of what came out of the object store (its arrays are read-only views)."""
    if isinstance(value, tuple):
        return tuple(_own(v) for v in value)
    return np.array(value) if isinstance(value, np.ndarray) else value


def _part_names(k, parts):
    """[(state-dict name, nn.Module)] and [(kind, index, optimizer)] of actor k's parts, named as in DNINet."""
    itf, im = parts["interface"], parts["input"]
    named = [(f"module{k}", parts["module"])]
    optimizers = [("module", k, parts["optimizer"])]
    if itf is not None:
        named.append((f"synth{k}", itf.synthesizer))
        if itf.optimizer is not None:
            optimizers.append(("synth", k, itf.optimizer))
    if im is not None:
        named.append((f"input{k}", im.model))
        optimizers.append(("input", k, im.optimizer))
    return named, optimizers


def _load_parts(named, optimizers, state):
    """Load the entries of a DNINet-style state dict that belong to these parts (the others are ignored)."""
    for name, part in named:
        part.load_state_dict({key[len(name) + 1:]: v for key, v in state.items() if key.startswith(name + "/")})
    for kind, i, opt in optimizers:
        prefix = f"optim/{kind}{i}/"
        opt.load_state_dict({key[len(prefix):]: v for key, v in state.items() if key.startswith(prefix)})


class _OneModule:
    """The slice of a DNINet an actor holds, shaped like the net so that Runner's event methods run on it unchanged:
    module k (and M_k, I_k) at index k of lists whose other entries are None."""

    def __init__(self, k, n_modules, n_interfaces, parts):
        self.modules, self.optimizers = [None] * n_modules, [None] * n_modules
        self.modules[k], self.optimizers[k] = parts["module"], parts["optimizer"]
        self.interfaces = [None] * n_interfaces
        if parts["interface"] is not None:
            self.interfaces[k] = parts["interface"]
        self.inputs = None if not parts["has_inputs"] else [None] * n_modules
        if parts["input"] is not None:
            self.inputs[k] = parts["input"]
        self.loss = parts["loss"]


class ModuleWorker:
    """What the Ray actor of module k holds: module k, M_k, I_k and their optimizers, and a local store of the values
    it wrote or fetched (keyed as in schedules.py). The driver calls `run` once per tick with that tick's events."""

    # the sequential runner's event code, used as it is: it reads self.net, self.n_modules, self.target
    diagnose_every = 0
    _store_forward = Runner._store_forward
    _do_forward = Runner._do_forward
    _do_forward_unlocked = Runner._do_forward_unlocked
    _do_update_synthetic = Runner._do_update_synthetic
    _do_update_true = Runner._do_update_true
    _do_backprop = Runner._do_backprop
    _do_train_synth = Runner._do_train_synth
    _do_train_input = Runner._do_train_input

    def __init__(self, k, n_modules, n_interfaces, target, parts, backend, blas_threads):
        self.reset(k, n_modules, n_interfaces, target, parts, backend, blas_threads)

    def reset(self, k, n_modules, n_interfaces, target, parts, backend, blas_threads):
        """Hold module k of a (new) net: what __init__ does, for an actor a closed runner left idle."""
        from .. import kernels

        kernels.set_backend(backend)
        parts = pickle.loads(parts)      # sent as bytes: Ray's own unpickling would give read-only arrays
        if getattr(self, "_blas", None) is not None:
            self._blas.__exit__(None, None, None)
        self._blas = blas_threads_limit(blas_threads)        # until the next reset
        self._blas.__enter__()
        self.k, self.n_modules, self.target = k, n_modules, target
        self.net = _OneModule(k, n_modules, n_interfaces, parts)
        self.named, self.optimizers = _part_names(k, parts)
        self.interface = parts["interface"]
        for _, part in self.named:
            part.train()
        self.store = {}

    def info(self):
        import ray

        return {"module": self.k, "node_id": ray.get_runtime_context().get_node_id(),
                "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "clock": time.perf_counter()}

    def _read(self, key):
        try:
            return self.store[key]
        except KeyError:
            raise KeyError(f"RayRunner, actor of module {self.k}: needs {key_str(key)}, which is not in its store "
                           "(never sent, or already freed): the schedule is inconsistent (schedules.check)") from None

    def run(self, events, fetch, export, drop, *values):
        """Run one tick's events of this module, in order. `values` are the entries `fetch` names (ObjectRefs the
        driver passed, resolved by Ray); returns (records, spans) followed by the entries `export` names; then
        forgets the entries `drop` names."""
        for key, value in zip(fetch, values):
            self.store[key] = _own(value)
        records, spans = [], []
        for n, event in enumerate(events):
            writes = {}
            t0 = time.perf_counter()
            getattr(self, "_do_" + event.kind)(event, self._read, writes, records)
            spans.append((n, t0, time.perf_counter()))           # (which event, start, end) on this actor's clock
            self.store.update(writes)
        out = [self.store[key] for key in export]
        for key in drop:
            self.store.pop(key, None)
        return [(records, spans), *out] if out else (records, spans)

    def set_lrs(self, lrs):
        for kind, i, opt in self.optimizers:
            opt.lr = lrs[(kind, i)]

    def state(self, drop=()):
        """Everything a new actor needs to go on from here: parameters, buffers and optimizer states (DNINet's
        state-dict names), M_k's step count, the arrays of the local store, and which of them M_k's kept prediction
        was made on (interface.py: train() reuses it, so a restored actor must make it again)."""
        for key in drop:
            self.store.pop(key, None)
        parts = {f"{name}/{k}": v for name, part in self.named for k, v in part.state_dict().items()}
        for kind, i, opt in self.optimizers:
            parts.update({f"optim/{kind}{i}/{k}": v for k, v in opt.state_dict().items()})
        kept = None
        itf = self.interface
        if itf is not None and itf._kept is not None and itf._reusable(itf._kept[0], itf._kept[1]) is not None:
            h, y = itf._kept[:2]
            h_key = next((key for key, v in self.store.items() if key[0] == "h" and v is h), None)
            y_key = next((key for key, v in self.store.items() if key[0] == "batch" and v[1] is y), None)
            kept = (h_key, y_key) if h_key is not None and y_key is not None else None
        return {"parts": parts, "steps": itf.steps if itf is not None else 0, "kept": kept,
                "store": {key: v for key, v in self.store.items() if key[0] != "graph"},
                "graphs": sum(key[0] == "graph" for key in self.store)}

    def load(self, state):
        """Take over a state made by `state()` (of this module's actor, at a checkpoint)."""
        _load_parts(self.named, self.optimizers, state["parts"])
        self.store = {key: _own(v) for key, v in state["store"].items()}
        itf = self.interface
        if itf is not None:
            itf.forget()
            itf.steps = state["steps"]
            if state["kept"] is not None:              # predict again, leaving M_k's batch-norm statistics as they were
                h_key, y_key = state["kept"]
                buffers = [(b, b.copy()) for _, b in itf.synthesizer.named_buffers()]
                itf.synthetic_gradient(self.store[h_key], self.store[y_key][1])
                for b, saved in buffers:
                    np.copyto(b, saved)
        return len(self.store)


class RayRunner(Runner):
    """Execute `schedule` on `net` with module k in Ray actor k; bit-identical to Runner(..., blas_threads=1).
    See the module docstring.

    address           HOST:PORT of a running Ray cluster's head (None: this process's Ray, or a new local one)
    num_cpus          CPUs each actor reserves; "auto": 1 where the cluster has a CPU per module, else a share that
                      fits all actors on the cluster's nodes
    resources         None, or one dict of Ray custom resources per module: module k is placed on a node that has
                      resources[k] (`ray start --resources '{"node1": 1}'`)
    checkpoint_every  gather every actor's state every this many batches (and at each run()'s end), restored from
                      when an actor dies; 0: never (a dead actor is then an error)
    max_restores      give up (and raise) after this many restores in one runner's life
    blas_threads      BLAS threads per actor (1: the count that makes the match with Runner exact)
    ticks_in_flight   how many ticks the driver submits ahead of the last finished one (default 4 per module)
    start_timeout     seconds to wait for the actors to be placed before saying which could not be
    reuse_actors      take over the actors a closed RayRunner left idle, and leave its own idle at close() (they
                      keep their CPUs until then: RayRunner.release_idle_actors() frees them)
    """

    def __init__(self, net, schedule=None, batches=None, *, address=None, num_cpus="auto", resources=None,
                 checkpoint_every=100, max_restores=3, blas_threads=1, diagnose_every=0, ticks_in_flight=None,
                 start_timeout=60.0, reuse_actors=True):
        super().__init__(net, schedule, batches, diagnose_every=diagnose_every, blas_threads=None)
        reasons = reads_other_modules(net, diagnose_every)
        device = getattr(net, "device", None)
        if getattr(device, "name", "cpu") != "cpu":
            raise ValueError(f"RayRunner: the net is on {device.name}, but actors pass NumPy arrays between "
                             "processes; run it on the CPU (net.to('cpu')), or use Runner on the device")
        if reasons:
            raise ValueError("RayRunner: an actor holds only its own module, but " + "; ".join(reasons) + " need "
                             "the modules above. Use the sequential Runner for these.")
        if resources is not None and (len(resources) != self.n_modules
                                      or not all(isinstance(r, dict) for r in resources)):
            raise ValueError(f"RayRunner: resources must be one dict per module ({self.n_modules}), e.g. "
                             f"[{{'node0': 1}}, {{'node1': 1}}], got {resources!r}")
        if num_cpus != "auto" and not (isinstance(num_cpus, (int, float)) and num_cpus > 0):
            raise ValueError(f"RayRunner: num_cpus must be a number > 0 or 'auto', got {num_cpus!r}")
        self.checkpoint_every = int(checkpoint_every)
        self.max_restores, self.actor_blas_threads = int(max_restores), blas_threads
        self.ticks_in_flight = int(ticks_in_flight or 4 * self.n_modules)
        self.resources, self.start_timeout, self.reuse_actors = resources, float(start_timeout), bool(reuse_actors)
        self._ray = connect(address)
        self.num_cpus = self._cpus_per_actor() if num_cpus == "auto" else float(num_cpus)
        from .. import kernels

        self._backend = kernels.get_backend()
        self._actors, self.placement, self._clock = None, [], []
        self._readers, self._holders = {}, {}       # key -> modules that read it / hold it in their local store
        self._drops = collections.defaultdict(list)  # module -> freed keys it still holds
        self._in_flight = collections.deque()        # (tick, [(module, events, ObjectRef of (records, spans))])
        self._batches = {}                           # b -> (x, y) while ("batch", b) is alive (for checkpoints)
        self._fed_since, self._checkpoint, self._lrs_sent = [], None, None
        self.faults, self.restores, self.checkpoints, self._broken = [], 0, 0, False

    # ---- placing the actors ------------------------------------------------------------------------------------------
    def _cpus_per_actor(self):
        """1 if the cluster has a CPU per module, else the largest share c_j / n that packs every actor onto the
        nodes (CPU capacities c_j), rounded down to Ray's 1e-4 granularity."""
        caps = [n["Resources"].get("CPU", 0.0) for n in self._ray.nodes() if n.get("Alive")]
        if sum(caps) >= self.n_modules and sum(int(c) for c in caps) >= self.n_modules:
            return 1.0
        shares = sorted({c / k for c in caps if c > 0 for k in range(1, self.n_modules + 1)}, reverse=True)
        for share in shares:
            share = int(share * 1e4) / 1e4
            if share > 0 and sum(int(c / share + 1e-9) for c in caps) >= self.n_modules:
                return share
        raise ValueError(f"RayRunner: the Ray cluster has no CPUs to place {self.n_modules} actors on")

    def _parts(self, k):
        net = self.net
        return {"module": net.modules[k], "optimizer": net.optimizers[k],
                "interface": net.interfaces[k] if k < len(net.interfaces) else None,
                "input": net.inputs[k] if net.inputs is not None else None,
                "has_inputs": net.inputs is not None, "loss": net.loss if k == self.n_modules - 1 else None}

    def _actor_key(self, k):
        return (self.num_cpus, tuple(sorted((self.resources[k] if self.resources else {}).items())))

    def _start(self, states=None, keep=None):
        """Create the actors (from the driver's net, then `states` if given) and wait until each one answers.

        keep: {module: live actor} to go on with (after a fault, the survivors: `states` replaces all they hold).
        Actors a closed runner left idle (reuse_actors) are taken over first: a new process costs seconds, a reset
        milliseconds. Idle actors that ask for other resources are killed, to free what they hold."""
        if self._actors is not None:
            return
        ray = self._ray
        session = ray.get_runtime_context().get_job_id()
        if _IDLE.get("session") != session:
            _IDLE.clear()
            _IDLE.update(session=session, actor_class=ray.remote(ModuleWorker), actors={})
        wanted = collections.Counter(self._actor_key(k) for k in range(self.n_modules)) if self.reuse_actors else {}
        for key in list(_IDLE["actors"]):
            if key not in wanted:
                for a in _IDLE["actors"].pop(key):
                    ray.kill(a)
        actors, refs = [], []
        for k in range(self.n_modules):
            if keep and k in keep:
                actors.append(keep[k])
                refs.append(keep[k].info.remote())
                continue
            args = (k, self.n_modules, len(self.net.interfaces), self.target, pickle.dumps(self._parts(k)),
                    self._backend, self.actor_blas_threads)
            idle = _IDLE["actors"].get(self._actor_key(k), [])
            if idle:
                a = idle.pop()
                a.reset.remote(*args)
            else:
                options = {"num_cpus": self.num_cpus, "max_restarts": 0}
                if self.resources is not None:
                    options["resources"] = dict(self.resources[k])
                a = _IDLE["actor_class"].options(**options).remote(*args)
            actors.append(a)
            refs.append(a.info.remote())
        t_sent = time.perf_counter()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout)
        if len(ready) < len(refs):
            waiting = [k for k, r in enumerate(refs) if r not in ready]
            for a in actors:
                ray.kill(a)
            asks = {k: {"CPU": self.num_cpus, **(self.resources[k] if self.resources else {})} for k in waiting}
            raise RuntimeError(f"RayRunner: after {self.start_timeout:g} s the actors of modules {waiting} are still "
                               f"not placed; they ask for {asks}, and the cluster has {ray.available_resources()} "
                               "free: start nodes with those resources, or pass num_cpus / resources that fit")
        infos = ray.get(refs)
        now = time.perf_counter()
        # each actor's clock against the driver's (the same clock on one machine; close to it across machines)
        self._clock = [(t_sent + now) / 2 - info["clock"] for info in infos]
        self.placement = [{k: info[k] for k in ("module", "node_id", "ip", "pid")} for info in infos]
        if states is not None:
            ray.get([a.load.remote(s) for a, s in zip(actors, states)])
        self._actors, self._lrs_sent = actors, None
        self._actor_ids = {a._actor_id.hex(): k for k, a in enumerate(actors)}
        if self._checkpoint is None and self.checkpoint_every:
            self._take_checkpoint()

    @staticmethod
    def release_idle_actors():
        """Kill the actors closed runners left idle: they hold their CPUs, which other drivers may be waiting for."""
        if _IDLE.get("actors"):
            ray = import_ray()
            for a in [a for actors in _IDLE["actors"].values() for a in actors]:
                ray.kill(a)
            _IDLE["actors"].clear()

    @property
    def actors(self):
        """The Ray actor handles, module by module (None before the first event and after close())."""
        return self._actors

    def close(self):
        """Leave the actors idle for the next RayRunner (reuse_actors), or kill them. The Ray instance stays up, for
        other runners; ray.shutdown() ends it, and every actor with it."""
        if self._actors is not None:
            session = self._ray.get_runtime_context().get_job_id()
            for k, a in enumerate(self._actors):
                if self.reuse_actors and not self._broken and _IDLE.get("session") == session:
                    _IDLE["actors"].setdefault(self._actor_key(k), []).append(a)
                else:
                    self._ray.kill(a)
            self._actors = None

    # ---- feeding and submitting ------------------------------------------------------------------------------------
    def feed(self, x, y, copy=True):
        """As Runner.feed; the batch goes into the object store once, for every actor that reads it."""
        b = super().feed(x, y, copy)
        batch = self.store[("batch", b)] if copy else (np.array(x), np.array(y))
        for e in self.schedule.batch_events(b, self.n_modules, self.target):
            for key in e.reads:
                self._readers.setdefault(key, set()).add(e.module)
        self.store[("batch", b)] = self._ray.put(batch)
        self._batches[b] = batch
        if self.checkpoint_every:
            self._fed_since.append(batch)
        return b

    def _advance(self, bound):
        """Submit every queued event of the earliest tick (if before `bound`), one call per actor; return them."""
        while True:
            if not self._queue or self._queue[0][0] >= bound:
                return None
            try:
                self._start()
                if self._checkpoint_due():
                    self._take_checkpoint()
                return self._submit_tick()
            except Exception as err:  # noqa: BLE001 - a dead actor is restored from; anything else is re-raised
                if not self._is_fault(err):
                    raise
                self._recover(err)

    def _submit_tick(self):
        tick, events = self._queue[0][0], []
        while self._queue and self._queue[0][0] == tick:
            events.append(heapq.heappop(self._queue)[3])
        by_module = {}
        for e in events:
            by_module.setdefault(e.module, []).append(e)
        ConcurrentRunner._check_tick(by_module)
        self._push_lrs()
        calls = {}
        for m, evs in by_module.items():
            written, fetch, export, unread = set(), [], [], []
            for e in evs:
                fetch += [k for k in e.reads if k not in written and m not in self._holders.get(k, ())
                          and k not in fetch]
                for k in e.writes:
                    written.add(k)
                    readers = self._readers.get(k, set())
                    if readers:
                        self._holders.setdefault(k, set()).add(m)
                    else:
                        unread.append(k)                    # e.g. a dh with no trainee: dropped at once
                    if readers - {m}:
                        export.append(k)
            for k in fetch:
                if k not in self.store:
                    raise RuntimeError(f"RayRunner: tick {tick}, module {m} needs {key_str(k)}, which no actor has "
                                       "sent: the schedule is inconsistent (schedules.check)")
                self._holders.setdefault(k, set()).add(m)
            calls[m] = (evs, fetch, export, unread)
        for e in events:                                    # entries whose last reader runs in this tick
            for k in e.reads:
                self._refs[k] -= 1
                if self._refs[k] == 0:
                    del self._refs[k]
                    for holder in self._holders.pop(k, ()):
                        self._drops[holder].append(k)
                    self._readers.pop(k, None)
        submitted = []
        for m in sorted(calls, reverse=True):               # the sequential runner's order, for the logs
            evs, fetch, export, unread = calls[m]
            drop = self._drops.pop(m, []) + unread
            refs = self._actors[m].run.options(num_returns=1 + len(export)).remote(
                evs, fetch, export, drop, *[self.store[k] for k in fetch])
            refs = refs if export else [refs]
            self.store.update(zip(export, refs[1:]))
            submitted.append((m, evs, refs[0]))
        for k in [k for k in self.store if k not in self._refs]:     # freed: the last reader has its ObjectRef
            del self.store[k]
            if k[0] == "batch":
                self._batches.pop(k[1], None)
        self._in_flight.append((tick, submitted))
        while len(self._in_flight) > self.ticks_in_flight:
            self._collect_oldest()
        return events

    def _push_lrs(self):
        """Send the driver's learning rates to the actors when they changed (net.set_lr between runs)."""
        lrs = {(kind, i): opt.lr for kind, i, opt in self.net._optimizers()}
        if lrs != self._lrs_sent:
            for a in self._actors:
                a.set_lrs.remote(lrs)
            self._lrs_sent = lrs

    def _collect_oldest(self):
        """Wait for the oldest submitted tick; append its records to the logs and its spans to the trace."""
        tick, calls = self._in_flight.popleft()
        results = self._ray.get([ref for _, _, ref in calls])
        for (m, evs, _), (records, spans) in zip(calls, results):
            for kind, record in records:
                {"loss": self.log, "synth": self.synth_log, "input": self.input_log}[kind].append(record)
            shift = self._clock[m] - self.trace.origin
            self.trace.spans += [Span(evs[n], t0 + shift, t1 + shift, f"ray-actor-{m}") for n, t0, t1 in spans]
            self.events_run += len(evs)

    @property
    def pending_ticks(self):
        """Ticks submitted to the actors whose results the driver has not collected yet (at most ticks_in_flight)."""
        return len(self._in_flight)

    def wait(self):
        """Wait for every tick submitted so far (their logs and spans collected), without fetching the actors' state:
        run(n) returns with up to ticks_in_flight ticks still running in the actors."""
        while self._in_flight:
            self._collect_oldest()
        return self

    def flush(self):
        """Run every queued event, wait for all of them, and load the actors' state into the driver's net."""
        while True:
            super().flush()
            try:
                self.sync()
                return self
            except Exception as err:  # noqa: BLE001
                if not self._is_fault(err):
                    raise
                self._recover(err)

    def sync(self):
        """Wait for everything submitted; copy every actor's parameters and optimizer state into the driver's net
        (after a drained run this is also a checkpoint)."""
        if self._actors is None:
            return self
        self.wait()
        states = self._ray.get([a.state.remote(self._drops.pop(k, [])) for k, a in enumerate(self._actors)])
        merged = {key: v for s in states for key, v in s["parts"].items()}
        _load_parts(self.net.named_parts(), self.net._optimizers(), merged)
        for k, itf in enumerate(self.net.interfaces):
            itf.forget()
            itf.steps = states[k]["steps"]
        if self.checkpoint_every and not self._queue:
            self._save_checkpoint(states)
        return self

    # ---- checkpoints and faults --------------------------------------------------------------------------------------
    def _checkpoint_due(self):
        if not self.checkpoint_every or any(k[0] == "graph" for k in self._holders):
            return False
        oldest = min(item[3].batch for item in self._queue)          # batches before it are done
        return oldest >= self._checkpoint["oldest"] + self.checkpoint_every

    def _take_checkpoint(self):
        self.wait()
        states = self._ray.get([a.state.remote(self._drops.pop(k, [])) for k, a in enumerate(self._actors)])
        self._save_checkpoint(states)

    def _save_checkpoint(self, states):
        """Keep the actors' states and the driver's bookkeeping at this tick boundary (nothing in flight)."""
        assert not self._in_flight and not any(s["graphs"] for s in states), "a checkpoint with graphs in flight"
        self._checkpoint = {
            "states": states, "queue": list(self._queue), "refs": dict(self._refs), "seq": self._seq,
            "n_fed": self.n_fed, "events_run": self.events_run, "store": set(self.store),
            "readers": {k: set(v) for k, v in self._readers.items()},
            "holders": {k: set(v) for k, v in self._holders.items()}, "batches": dict(self._batches),
            "logs": (len(self.log), len(self.synth_log), len(self.input_log), len(self.trace.spans)),
            "oldest": min((item[3].batch for item in self._queue), default=self.n_fed)}
        self._fed_since = []
        self.checkpoints += 1

    def _is_fault(self, err):
        ex = self._ray.exceptions
        kinds = (ex.RayActorError, ex.ObjectLostError)
        return isinstance(err, kinds) or (isinstance(err, ex.RayTaskError) and isinstance(err.cause, kinds))

    def _recover(self, err):
        """An actor died: restart every actor from the last checkpoint and bring the driver back to it."""
        ray, c = self._ray, self._checkpoint
        cause = err.cause if isinstance(err, ray.exceptions.RayTaskError) else err
        module = getattr(self, "_actor_ids", {}).get(getattr(cause, "actor_id", None), "?")
        what = " ".join(str(cause).split())[:200]
        self._broken = c is None or self.restores >= self.max_restores     # close() then kills, not pools
        if c is None:
            raise RuntimeError(f"RayRunner: the actor of module {module} died ({what}), and there is no checkpoint "
                               "to restore from (checkpoint_every=0)") from err
        if self.restores >= self.max_restores:
            raise RuntimeError(f"RayRunner: the actor of module {module} died ({what}); given up after "
                               f"{self.restores} restores (max_restores)") from err
        t0, failed_at = time.perf_counter(), self.n_fed
        fed_since = self._fed_since
        survivors = self._survivors()
        self._actors = None
        self._queue, self._refs, self._seq = list(c["queue"]), dict(c["refs"]), c["seq"]
        heapq.heapify(self._queue)
        self.n_fed, self.events_run, self._first_tick = c["n_fed"], c["events_run"], (None, None)
        self._readers = {k: set(v) for k, v in c["readers"].items()}
        self._holders = {k: set(v) for k, v in c["holders"].items()}
        self._batches, self._drops, self._in_flight = dict(c["batches"]), collections.defaultdict(list), \
            collections.deque()
        n_log, n_synth, n_input, n_spans = c["logs"]
        del self.log[n_log:], self.synth_log[n_synth:], self.input_log[n_input:], self.trace.spans[n_spans:]
        self.store = {}
        for key in c["store"]:                      # the ObjectRefs in flight at the checkpoint, made again
            if key[0] == "batch":
                value = self._batches[key[1]]
            else:
                value = next(s["store"][key] for s in c["states"] if key in s["store"])
            self.store[key] = ray.put(value)
        self._start(states=c["states"], keep=survivors)
        self._fed_since = []
        for x, y in fed_since:                       # the batches fed since the checkpoint, fed again
            self.feed(x, y, copy=False)
        self.restores += 1
        fault = {"module": module, "error": what, "replaced": sorted(set(range(self.n_modules)) - set(survivors)),
                 "failed_at_batch": failed_at, "restored_to_batch": c["oldest"], "batches_fed_again": len(fed_since),
                 "seconds": round(time.perf_counter() - t0, 3)}
        self.faults.append(fault)
        logger.warning("RayRunner: the actor of module %s died (%s); replaced the actors of modules %s, restored every "
                       "actor from the checkpoint at batch %s and fed %s batches again (%.2f s)", module, what,
                       fault["replaced"], c["oldest"], len(fed_since), fault["seconds"])

    def _survivors(self, timeout=10.0):
        """{module: actor} of the actors that still answer (their state is replaced on restore); the rest are killed.
        A call queued on a survivor runs before the restore: its results are dropped, the checkpoint overwrites it."""
        ray, alive = self._ray, {}
        if self._actors is None:
            return alive
        pings = [a.info.remote() for a in self._actors]
        ray.wait(pings, num_returns=len(pings), timeout=timeout)
        for k, (a, ping) in enumerate(zip(self._actors, pings)):
            try:
                ray.get(ping, timeout=0)
                alive[k] = a
            except Exception:  # noqa: BLE001 - dead, or too slow to answer: replaced either way
                ray.kill(a, no_restart=True)
        return alive

    def actor_store_sizes(self):
        """How many entries each actor's local store holds (0 everywhere after a drained run)."""
        if self._actors is None:
            return []
        drops = [self._drops.pop(k, []) for k in range(self.n_modules)]
        return [len(s["store"]) + s["graphs"] for s in
                self._ray.get([a.state.remote(d) for a, d in zip(self._actors, drops)])]

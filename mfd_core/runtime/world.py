"""One run: the nodes a network driver hosts, under one sharing policy, and its record.

The world is handed its network (the simulator, UDP sockets, a Ray actor's partition)
and builds nothing of it; it gives each node a narrow :class:`NodeServices` and the
policy a :class:`~mfd_core.process.Runtime` (itself), so neither ever calls back into
the world. The harness is the same for every policy, so a comparison swaps one name and
keeps the topology, the data, the initial models, the faults and the seed.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..learners.base import Learner
from ..metrics import RunResult
from ..network.base import Network, NetworkChange
from ..process import Node, NodeServices, SharingPolicy, Transport
from ..scaling import ModelFamily
from ..scenario import Fault
from .faults import initially_absent, schedule_faults

Evaluate = Callable[[int, Learner], float]


# (time, a function returning {node: served state_dict}, whether the run ended): see World.run
Checkpoint = Callable[[float, Callable[[], dict], bool], None]


class World:
    """Everything a run holds where it runs: the clock, the network, the nodes, the record.

    Generic over tasks: it takes one :class:`~mfd_core.learners.base.Learner` per hosted
    node and ``evaluate(node_id, learner) -> float`` for the measurements (a held-out
    test set, evaluation episodes...).

    :param network: the driver; the world hosts the nodes it is given learners for.
    :param policy: the sharing policy object (``policy_by_name(name, settings)``).
    :param transport: MTU and selective repeat for every node.
    :param local_steps: minibatch (or environment) steps per training chunk.
    :param families: model families by name, to build teachers of other architectures.
    :param faults: :class:`mfd_core.scenario.Fault` entries, in fractions of ``duration``.
    :param node_ids: every node of the run, hosted here or not (default: the learners').
    :param measures: more per-node measurements to record beside the score at every
        measurement, ``name -> f(node)`` (e.g. a robot's env steps); NaN while a node is away.
    """

    idle_poll = 0.5  # seconds between checks of a node that is away

    def __init__(self, network: Network, learners: Mapping[int, Learner], *, policy: SharingPolicy,
                 seed: int, duration: float, eval_interval: float, local_steps: int, evaluate: Evaluate,
                 transport: Transport | None = None, families: Mapping[str, ModelFamily] | None = None,
                 faults: Sequence[Fault] = (), name: str = "run", key: bytes | None = None,
                 label_profiles: Mapping[int, Sequence[float]] | None = None,
                 node_ids: Sequence[int] | None = None,
                 measures: Mapping[str, Callable[[Node], float]] | None = None) -> None:
        self.network = network
        self.env = network.env
        self.key = key
        self.transport = transport or Transport()
        self.seed, self.duration, self.eval_interval, self.local_steps = seed, duration, eval_interval, local_steps
        self.faults, self.evaluate = tuple(faults), evaluate
        self.measures = dict(measures or {})
        self.node_ids = list(node_ids) if node_ids is not None else list(learners)
        self.rng = np.random.default_rng(seed)
        for n in initially_absent(self.faults):
            network.leave(n)
        self.policy = policy
        self.families: dict[str, ModelFamily] = dict(families or {})
        services = NodeServices(network, self.transport, key, self.families, self.log, seed)
        self.nodes: dict[int, Node] = {}
        for node_id, learner in learners.items():
            node = Node(node_id, learner, services, policy)
            node.label_profile = tuple((label_profiles or {}).get(node_id, ()))
            self.nodes[node_id] = node
        self.result = RunResult(name, policy.name, seed, sorted(self.nodes))
        self.extra = self.result.extra
        self._progress: Callable[[float], None] | None = None

    @property
    def graph(self):
        """The overlay the network was built on."""
        return self.network.graph

    def log(self, kind: str, **fields: Any) -> None:
        self.result.events.append({"t": round(self.env.now, 6), "event": kind, **fields})

    # -- running ----------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None, checkpoint: Checkpoint | None = None) -> RunResult:
        """Run to the end of the duration; ``progress(t)`` after every measurement.

        :param checkpoint: called after every measurement and once at the end
            (``final=True``) with the time and :meth:`served_states`, which it calls only
            when it saves (:meth:`~mfd_core.runfolder.RunFolder.checkpoint` decides how often).
        """
        if checkpoint is not None:
            def measured(t: float) -> None:
                checkpoint(t, self.served_states, False)
                if progress is not None:
                    progress(t)
        # The models of a simulated fleet are tiny: torch's intra-op threads cost more
        # than they give (a 64-64-10 MLP step: 1.2 ms with 2 threads, 0.3 ms with 1, here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self.start(progress if checkpoint is None else measured)
            self.advance(self.duration + 1e-9)
            result = self.finish()
            if checkpoint is not None:
                checkpoint(self.env.now, self.served_states, True)
            return result
        finally:
            torch.set_num_threads(threads)

    def start(self, progress: Callable[[float], None] | None = None) -> None:
        """Start the policy, the faults and the measurements (the clock does not move)."""
        self._progress = progress
        self._started = time.perf_counter()
        self.network.on_change(self._on_change)
        self.policy.start(self)
        recorded = schedule_faults(self.network, self.faults, duration=self.duration, seed=self.seed,
                                   node_ids=self.node_ids, server=getattr(self.policy, "server", None),
                                   log=self.log)
        if recorded:
            self.extra.setdefault("faults", []).extend(recorded)
        self.env.process(self._measure())

    def advance(self, until: float) -> None:
        """Move the clock to ``until`` (a driver that runs in windows calls this per window)."""
        self.network.run(until=until)

    def finish(self) -> RunResult:
        """The final measurement and the counters: the run's record."""
        if not self.result.times or self.result.times[-1] < self.duration - 1e-9:
            self.result.record(self.env.now, self._scores_now(), self.network.stats(), self._measures_now())
        self.result.wall_seconds = time.perf_counter() - self._started
        self.extra.update(self._counters())
        return self.result

    def _measure(self):
        interval = self.eval_interval
        while True:
            scores = self._scores_now()
            self.result.record(self.env.now, scores, self.network.stats(), self._measures_now())
            if self._progress:
                self._progress(self.env.now)
            yield self.env.timeout(interval)

    def _on_change(self, change: NetworkChange) -> None:
        self.log(change.kind, node=change.node)
        if change.kind == "join" and change.node in self.nodes:
            self.policy.on_join(self.nodes[change.node])

    def _scores_now(self) -> list[float]:
        # a node that is away serves nothing: NaN, a gap in its curve, left out of means
        return [self.score_served(self.nodes[n]) if self.network.is_up(n) else math.nan
                for n in self.result.node_ids]

    def _measures_now(self) -> dict[str, list[float]]:
        return {name: [float(f(self.nodes[n])) if self.network.is_up(n) else math.nan for n in self.result.node_ids]
                for name, f in self.measures.items()}

    def served_state(self, node: Node) -> dict[str, torch.Tensor]:
        """The model ``node`` serves (deploys): what its policy says, or its own."""
        served = self.policy.served_state(node)
        return served if served is not None else node.learner.get_state()

    def served_states(self) -> dict[int, dict[str, torch.Tensor]]:
        """``{node: the model it serves}`` for every node that is up (what a checkpoint keeps)."""
        return {n: self.served_state(self.nodes[n]) for n in self.result.node_ids if self.network.is_up(n)}

    def score_served(self, node: Node) -> float:
        """Score the model the node serves: its own, or what its policy serves (MFD's blend)."""
        served = self.policy.served_state(node)
        if served is None:
            return self.evaluate(node.id, node.learner)
        own = node.learner.get_state()
        node.learner.set_state(served)
        try:
            return self.evaluate(node.id, node.learner)
        finally:
            node.learner.set_state(own)

    def _counters(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for node in self.nodes.values():
            for name, value in vars(node.counters).items():
                totals[name] = totals.get(name, 0) + value
            for name, value in node.reassembler.stats.items():
                totals[f"rx_{name}"] = totals.get(f"rx_{name}", 0) + value
        return totals

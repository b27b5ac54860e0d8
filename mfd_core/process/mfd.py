"""MFD with owned models: every node keeps its own model and exchanges with chosen peers.

No server, no global rounds. Every node decides alone:

- **when** to share: when its own validation score rose by ``share_margin`` since it
  last shared, or when it has been silent for ``max_silence`` (so a saturated node
  still passes on what it knows), within a byte budget;
- **with whom**: the ``fanout`` neighbours that gain most, judged from what they
  report about themselves (score, samples, compute, memory) and the link to them
  (bandwidth, loss, latency);
- **what to accept**: every incoming model passes the gate (scored on the node's own
  validation data, refused if it would make the node worse), then is merged weighted
  by samples and score; a partial model merges only what arrived.

A node that joins pulls its neighbours' models to bootstrap; a node that leaves takes
nothing the others need with it.
"""
from __future__ import annotations

import bisect
import math
from array import array
from typing import Callable, Iterator, Literal, Mapping

import networkx as nx
import numpy as np
import torch
from pydantic import Field
from simpy.events import Timeout

from .. import knowledge, scaling
from ..messages import Control, ModelHeader, Pull
from ..packet import BROADCAST, NEIGHBOURS
from ..reassembly import ReceivedModel
from .base import PolicySettings, Runtime, SharingPolicy
from .node import Node


class MFDSettings(PolicySettings):
    """Settings of MFD with owned models (name = "mfd")."""

    # The defaults are the settings the shipped digits scenarios found best (issue 14 item 7;
    # benchmarks/defaults.py checks them against FedAvg over topologies, loss and skew).
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "int8", description="wire precision of shared models; auto: per link from its rate and loss")
    share_margin: float = Field(0.02, ge=0, description="score gain since the last share that triggers one")
    max_silence: float = Field(3.0, gt=0, description="share anyway after this many seconds (longer for a "
                               "node with more neighbours than its fanout: see silence_density)")
    silence_density: float = Field(0.25, ge=0, le=1, description="a node with more neighbours than its fanout "
                                   "stays silent (neighbours / fanout) to this power times max_silence: the "
                                   "neighbours it skips hear the same knowledge from those they share with it "
                                   "(0: max_silence for every node)")
    clean_silence: float = Field(0.33, gt=0, le=1, description="a node whose links and neighbours' links lose "
                                 "nothing stays silent this fraction of its keep-alive, rising to all of it as "
                                 "the worst of those links' loss reaches 1 %: on clean links a synchronised "
                                 "average runs its rounds at compute speed, and neighbourhood mixing must keep "
                                 "pace across the network (1: off)")
    fanout: int = Field(4, ge=1, description="neighbours a model is sent to per share")
    favour_isolated: bool = Field(True, description="prefer neighbours that report few neighbours")
    gate_tolerance: float = Field(0.3, ge=0, le=1, description="refuse models whose merge scores this much "
                                  "below the local model on the node's own validation data")
    serve_blend: bool = Field(True, description="serve the blend of the own model and the latest "
                              "gate-approved neighbour models")
    serve_max_age: float = Field(20.0, gt=0, description="neighbour models older than this (s) are not served")
    byte_budget: float = Field(0.0, ge=0, description="bytes per second a node may send (0: unlimited)")
    hello_interval: float = Field(5.0, gt=0, description="seconds between a node's looks at whether to report "
                                  "itself to its neighbours (it does when its profile changed or a new neighbour "
                                  "spoke)")
    hello_refresh: float = Field(60.0, ge=0, description="seconds after which a node reports itself even if "
                                 "nothing changed (a keep-alive; 0: at every hello_interval)")
    hello_refresh_max: float = Field(480.0, ge=0, description="the keep-alive's interval doubles, from "
                                     "hello_refresh up to this, while nothing changes, and falls back when who is "
                                     "around changes (Trickle, RFC 6206); news is never delayed by it")
    bootstrap_hops: int = Field(3, ge=1, le=8, description="how many hops out a (re)joining node asks for "
                                "models (one with fewer neighbours than fanout asks at least 2)")
    echo_window: float = Field(2.0, ge=0, description="neighbours whose model was merged this many seconds "
                               "ago or less are sent to last: they hold most of what would go back (0: off)")
    merge_window: float = Field(0.0, ge=0, description="seconds a node listens after sharing for its "
                                "neighbours' models of the round, then merges them together (0: each on arrival)")
    share_hops: int = Field(1, ge=1, le=8, description="how many hops out a node may send its model to "
                            "(1: neighbours only)")
    sparse_share_hops: int = Field(2, ge=1, le=8, description="how far out a node that has no more "
                                   "neighbours than its fanout chooses its targets (it would send to all of them "
                                   "anyway), within the transmissions of a share to every neighbour (1: no further "
                                   "than share_hops)")
    merge_weights: Literal["samples_score", "samples"] = Field(
        "samples_score", description="a merged model weighs its samples times its score, or its samples "
        "alone (plain data-parallel averaging: where every score starts near 0, as an RL success rate does, "
        "the first lucky score would otherwise outweigh the rest)")


# The loss of the worst link around a node at and above which it keeps its whole keep-alive
# (see MFDPolicy.silence): a 28-packet fp32 model crosses a link losing 1 % whole 75 % of
# the time, and a synchronised round waits for the rest.
CLEAN_LOSS = 0.01


def _delay_to(now: float, when: float) -> float:
    """The delay that brings the clock from ``now`` to exactly ``when`` (``now + delay ==
    when`` in floating point, as the simulator computes it): the loop's looks fall on the
    very instants a plain ``timeout(interval)`` loop's would."""
    delay = when - now
    for _ in range(4):
        reached = now + delay
        if reached == when:
            break
        delay = math.nextafter(delay, math.inf if reached < when else -math.inf)
    return delay


class _HelloLooks:
    """When a node reports itself to its neighbours: when there is news, its profile
    changed (score to 0.01, samples, width, memory, degree, ...) or a neighbour it had not
    heard from spoke, or the keep-alive fell due: ``hello_refresh`` after a change of who
    is around, doubling up to ``hello_refresh_max`` while nothing changes (Trickle's
    back-off; a new score alone neither resets nor doubles it). At
    1,000 nodes training every 30 s, hellos every 5 s were 72,000 of 76,000 datagrams;
    most said what the last one said. With a fixed 60 s keep-alive, a 1,000-node hour
    still sent 65,000 hellos (390,000 receptions), 60,000 of them keep-alives.

    The node looks on a grid of ``hello_interval`` ticks, but only at the ticks that can
    find something: the first after :meth:`Node.news` (a new model, a new neighbour, a
    network change) and the one at which the refresh falls due. Looking at every tick
    was a sixth of a 1,000-node hour's CPU, and finds nothing more: the profile changes
    only with news.

    Plain timer callbacks, no process: a process woken by every new model version (a
    1,000-node hour: 248,000 wakes for 24,000 hellos) cost an event to wake it, one to
    sleep to the tick and a fresh refresh timer at each wake, left behind in the event
    queue when news came first. Here news costs one timer to the tick, and one refresh
    timer stands at a time: armed for an earlier time than the refresh, it re-arms when it
    fires. The looks fall on the same instants as the process's did.
    """

    __slots__ = ("node", "env", "interval", "base_refresh", "refresh_max", "refresh", "tick", "grid", "said",
                 "said_at", "due", "look_at", "timer", "timer_at")

    def __init__(self, node: Node, env, settings: MFDSettings) -> None:
        self.node, self.env = node, env
        self.interval, self.base_refresh = settings.hello_interval, settings.hello_refresh
        self.refresh_max = max(self.base_refresh, settings.hello_refresh_max)
        self.refresh = self.base_refresh
        # the grid's times come from repeated addition, as a plain `timeout` loop's do
        self.tick = env.now
        self.grid = array("d", [self.tick])  # the grid's ticks from the latest look on (see _first_tick_due)
        self.said, self.said_at = None, -math.inf
        self.due = math.inf  # the tick at which the refresh falls due
        self.look_at: Timeout | None = None  # the look the latest news asked for, not yet made
        self.timer: Timeout | None = None  # the refresh timer (at or before `due`)
        self.timer_at = math.inf  # when it fires

    def news(self) -> None:
        """Something a hello tells may have changed: look at the first tick after it."""
        if self.look_at is not None:
            return  # a look is coming already
        now, tick = self.env.now, self.tick + self.interval
        while tick < now:
            tick += self.interval
        self.tick = tick
        self.look_at = Timeout(self.env, _delay_to(now, tick) if tick > now else 0.0)
        self.look_at.callbacks.append(self._look_after_news)

    def _look_after_news(self, event: Timeout) -> None:
        if event is self.look_at:
            self.look_at = None
            self.look()

    def _refresh_due(self, event: Timeout) -> None:
        if event is not self.timer:
            return  # replaced by an earlier one
        self.timer = None
        if self.look_at is not None:
            return  # news came: that look comes first, and arms the timer again
        if self.env.now < self.due:
            self._arm()  # armed for an earlier refresh, since put off by news
            return
        self.tick = self.due
        self.look()

    def look(self) -> None:
        """Look at tick ``self.tick`` (now): say hello if there is news or the refresh is due."""
        node, tick = self.node, self.tick
        if node.is_up():
            profile = node.profile()
            said = self.said
            news = profile != said or node.heard_new_neighbour
            if news or node.now - self.said_at >= self.refresh:
                # who is around changed (a neighbour it had not heard from, its degree, what
                # it is): the keep-alive comes back to its shortest interval, so that a
                # neighbour that missed this hello hears the node again soon. A new score is
                # told at once and is no reason to repeat it: scores move with every merge,
                # and resetting at each cost a 1,000-node hour 30,000 keep-alives
                # (control datagrams 162,268 -> 131,608, the same accuracy). A keep-alive
                # that had nothing new to say waits twice as long next time.
                if node.heard_new_neighbour or said is None or profile[1:] != said[1:]:
                    self.refresh = self.base_refresh
                elif not news:
                    self.refresh = min(2 * self.refresh, self.refresh_max)
                node.hello()
                self.said, self.said_at = profile, node.now
        self.due = self._first_tick_due(tick)
        self._arm()

    def _first_tick_due(self, tick: float) -> float:
        """The first tick after ``tick`` at which the refresh falls due (a look there finds
        ``now - said_at >= refresh``), on the grid as repeated addition makes it.

        The grid's ticks are kept from the latest look on, each added once (in an array,
        which the garbage collector does not walk): stepping a tick at a time from every
        look to its refresh (up to ``hello_refresh_max / hello_interval`` = 96 steps) was
        6 million steps in a 1,000-node hour."""
        refresh, said_at = self.refresh, self.said_at
        if not math.isfinite(refresh):
            return math.inf
        grid = self.grid
        at = bisect.bisect_left(grid, tick)
        if at == len(grid) or grid[at] != tick:
            grid = self.grid = array("d", [tick])  # news moved the tick past the grid's end: it starts there
            at = 0
        elif at > 64:
            del grid[:at]  # ticks behind the latest look are never asked for again
            at = 0
        interval = self.interval
        while len(grid) < at + 2 or grid[-1] - said_at < refresh:
            grid.append(grid[-1] + interval)
        return grid[bisect.bisect_left(grid, True, lo=at + 1, key=lambda t: t - said_at >= refresh)]

    def _arm(self) -> None:
        due = self.due
        if not math.isfinite(due) or (self.timer is not None and self.timer_at <= due):
            return  # none needed, or one stands that fires first (and re-arms)
        self.timer, self.timer_at = Timeout(self.env, _delay_to(self.env.now, due)), due
        self.timer.callbacks.append(self._refresh_due)


class MFDPolicy(SharingPolicy):
    """Owned models: each node keeps its own and exchanges with chosen neighbours."""

    name = "mfd"
    Settings = MFDSettings
    settings: MFDSettings

    def start(self, runtime: Runtime) -> None:
        super().start(runtime)
        for node in runtime.nodes.values():
            runtime.env.process(self._start_hellos(node))
        # a link or a node that comes or goes changes degrees and who is up: every loop looks
        runtime.network.on_change(lambda _change: [node.news() for node in runtime.nodes.values()])

    def _start_hellos(self, node: Node) -> Iterator:
        """Stagger the first hellos so a fleet does not speak all at once; from then on the
        node's :class:`_HelloLooks` report it when there is news."""
        env = self.runtime.env
        yield env.timeout(float(node.rng.uniform(0, min(self.settings.hello_interval, 0.5))))
        looks = _HelloLooks(node, env, self.settings)
        node.on_news = looks.news
        looks.look()

    # -- the node's life --------------------------------------------------------------

    def node_loop(self, node: Node) -> Iterator:
        """With ``merge_window`` > 0, rounds: merge what the last round brought, train a
        chunk, share, then listen ``merge_window`` seconds for the neighbours' models of
        this round (models of one round average well; one a chunk older pulls the node
        back by that chunk). Without, the default loop: each model merged as it arrives."""
        runtime = self.runtime
        window = self.settings.merge_window
        if window <= 0:
            yield from super().node_loop(node)
            return
        while True:
            if not node.is_up():
                yield runtime.env.timeout(runtime.idle_poll)
                continue
            self.accept_held(node)
            yield from node.train(runtime.local_steps)
            self.after_training(node)
            yield runtime.env.timeout(window)

    def after_training(self, node: Node) -> None:
        settings = self.settings
        now = node.now
        score = node.score()
        improved = score >= node.last_share_score + settings.share_margin
        silent = now - node.last_share_time >= self.silence(node)
        if not (improved or silent):
            return
        if settings.byte_budget and node.bytes_sent > settings.byte_budget * max(now, 1e-9):
            return
        targets = self.choose_targets(node, settings.fanout)
        if not targets:
            return
        for target in targets:
            state, precision, fitted = self.fit_to_receiver(node, target)
            node.send_model(target, header=node.header(score=node.score()), state=state, precision=precision,
                            scaling=fitted)
        node.counters.shares += 1
        node.last_share_score, node.last_share_time = score, now

    def silence(self, node: Node) -> float:
        """How long the node stays silent before it shares anyway: ``max_silence``, longer
        for a node with many neighbours, shorter for one whose links lose nothing (kept
        while the topology stands).

        A node with ``d`` neighbours, more than its ``fanout`` ``f``, reaches ``f`` of them
        a share, and its neighbourhood is a crowd that shares among itself: what it knows
        reaches the neighbours it skipped through the ones it sent to, which are their
        neighbours too. It waits ``(d / f) ** silence_density`` times as long, less than
        in proportion, since its own data's learning travels only with its own shares.
        (benchmarks/defaults.py, seeds 0 1 2: on the 50-node geometric network, 13
        neighbours a node and 10 % loss, a fixed keep-alive spent 0.70 of FedAvg's bytes
        for +6.5 points; the power 1 spent 0.29 for -10.3 points, 1/2 0.44 for +0.5, 1/4
        0.56 for +5.1. On the 30-node one, 5.5 neighbours a node: +2.2 -> +1.3 points,
        0.53 -> 0.51 of the bytes. Grids and rings, no node above its fanout, unchanged.)

        A node whose neighbourhood's links lose nothing (its own and its neighbours') waits
        ``clean_silence`` times as long, the factor rising linearly to 1 as the worst of
        those links' loss reaches 1 % (:data:`CLEAN_LOSS`). Over clean links every model
        crosses whole, so a synchronised average (FedAvg) runs a round per training chunk:
        on the lossless 36-node grid it sent 516 MB to MFD's 28.5 MB and MFD fell 2.5 points
        behind, still rising at the end while neighbourhood mixing crossed a diameter of 10
        hops a share or two at a time. A lost packet holds up every such round (a 28-packet
        fp32 model crosses a link losing 1 % whole 75 % of the time), so there the
        keep-alive stays: at 2 % loss the same grid's FedAvg sent 105-113 MB and MFD was
        ahead (+0.8 points, seeds 0 1). (benchmarks/defaults.py, seeds 0 1 2: the 36-node
        lossless grid -2.5 -> -0.5 points, worst seed -3.0 -> -1.2, 0.055 -> 0.14 of
        FedAvg's bytes; a factor 0.4: -1.0; the other 7 cases, no link under 2 % loss,
        unchanged. Lossless networks written for this check, seeds 0 1: a 24-node ring -6.1
        -> +1.5 points, a 12-node star -8.5 -> -1.9, a 12-node ring +1.4 -> +3.1, grids of 9
        and 16 -0.3 -> +0.4 and +5.1 -> +6.4, a 24-node small world +0.9 -> +2.2, each at
        most 0.15 of FedAvg's bytes.) The neighbours' links count too so that neighbours
        share at one pace: a node sharing three times as often as its neighbour outweighs
        the others in the neighbour's merges. Judged on its own links alone, a random
        geometric network's leaf on one short link (its links lose up to 5 % towards the
        edge of range even at no base loss) pulled its neighbour, whose other link was
        lossy, towards its own few classes: the shipped digits scenario, seed 0, 0.934 ->
        0.891, the leaf 0.85 -> 0.46. Within two hops no node of 20-50 such networks (5
        draws each) is under 1 %.
        """
        kept = self._topology_kept(node)
        silence = kept.get("silence")
        if silence is None:
            settings = self.settings
            silence = settings.max_silence
            neighbours = node.network.neighbours(node.id)
            degree = len(neighbours)
            if settings.silence_density and degree > settings.fanout:
                silence *= (degree / settings.fanout) ** settings.silence_density
            if settings.clean_silence < 1 and neighbours:
                net = node.network
                worst = max(net.link(a, b)["loss"] for a in [node.id, *neighbours] for b in net.neighbours(a))
                clean = settings.clean_silence
                silence *= clean + (1.0 - clean) * min(worst / CLEAN_LOSS, 1.0)
            kept["silence"] = silence
        return silence

    def choose_targets(self, node: Node, fanout: int) -> list[int]:
        """Neighbours that gain most per byte: a weaker reported score, a good link.

        Neighbours not yet heard from count as needing help (score 0) so a fleet starts
        mixing before the first reports arrive.
        """
        net = node.network
        neighbours = net.neighbours(node.id)
        if not neighbours:
            return []
        direct = set(neighbours)
        hops = self.settings.share_hops
        widened = False
        if (len(neighbours) <= fanout and self.settings.sparse_share_hops > hops
                and self._like_neighbourhood(node, neighbours)):
            # a node that would send to every neighbour has no choice to make among them,
            # and in a sparse network (a grid, a ring) news crosses it a hop a share; it
            # chooses among those a little further instead, for the same transmissions
            # (benchmarks/defaults.py, 8 networks x 3 seeds, against one hop: grid of 36
            # -8.2 -> -3.7 points from FedAvg, worst seed -12.0 -> -4.3; 6 of 8 better,
            # +1.5 points on average, bytes within 2 %)
            hops, widened = self.settings.sparse_share_hops, True
        if hops > 1:
            # a small fleet on a chain of links: a neighbourhood average mixes the fleet
            # only over several rounds; reaching further, one round does
            reach, neighbours = self._reach(node, hops)
        own = node.score()
        reports, favour_isolated = node.reports, self.settings.favour_isolated
        scored = []
        # a little noise so equal neighbours take turns (drawn at once: the same numbers)
        noise = node.rng.uniform(0.5, 1.0, size=len(neighbours)).tolist()
        qualities = self._link_qualities(node)
        # every node runs this at every share: a thousand nodes, an hour, 120,000 times
        for nbr, jitter in zip(neighbours, noise):
            quality = qualities.get(nbr)
            if quality is None:
                # a node further out is reached over the first link of its route, which
                # stands with the topology version as the direct links do
                link = net.link(node.id, nbr) if nbr in direct else self._first_link(node, nbr)
                quality = qualities[nbr] = link["bandwidth"] * (1.0 - link["loss"]) / (1.0 + 100.0 * link["latency"])
            report = reports.get(nbr)
            # a neighbour not heard from counts as needing help (score 0)
            gap = own - (report.score if report is not None else 0.0)
            need = 1.0 + gap if gap > 0.0 else 1.0
            if report is not None and report.degree and favour_isolated:
                # a neighbour with few neighbours of its own has few other sources
                need *= 1.0 + 2.0 / report.degree
            scored.append((need * quality * jitter, nbr))
        scored.sort(reverse=True)
        models = node.neighbour_models
        if self.settings.echo_window > 0 and models:
            # a neighbour whose model this node merged a moment ago holds most of what it
            # would get back; the others go first, each group in its order
            now, window = node.now, self.settings.echo_window
            if not widened:
                # the first `fanout` of that order, looking only as far down as it takes
                first, last = [], []
                for _, nbr in scored:
                    kept = models.get(nbr)
                    if kept is not None and now - kept[3] <= window:
                        last.append(nbr)
                    else:
                        first.append(nbr)
                        if len(first) == fanout:
                            return first
                return (first + last)[:fanout]
            heard = {origin for origin, (_, _, _, t) in models.items() if now - t <= window}
            if heard:
                scored.sort(key=lambda pair: pair[1] in heard)  # stable: each group keeps its order
        if not widened:
            return [nbr for _, nbr in scored[:fanout]]
        # reaching further costs a transmission a hop: the share keeps the bytes of a
        # share to every neighbour (a target two hops out takes two of them)
        chosen, budget = [], len(direct)
        for _, nbr in scored:
            cost = reach[nbr]
            if cost <= budget:
                chosen.append(nbr)
                budget -= cost
                if not budget:
                    break
        return chosen

    @staticmethod
    def _like_neighbourhood(node: Node, neighbours: list[int]) -> bool:
        """Every neighbour has reported itself, with the node's own family and width. Only
        neighbours report (hellos go one hop), so a node two hops out is sent the sender's
        own width; where the neighbours are alike the fleet around is likely alike too,
        and where they are not, a narrower node two hops out would get a model wider than
        it can use."""
        family, width, reports = node.learner.family, node.learner.width, node.reports
        for nbr in neighbours:
            report = reports.get(nbr)
            if report is None or report.family != family or report.width != width:
                return False
        return True

    def _reach(self, node: Node, hops: int) -> tuple[dict[int, int], list[int]]:
        """The nodes within ``hops`` that are up and routable ({node: hops away}, and their
        sorted list): a search, kept while the topology stands (every join, leave and link
        change is a new version)."""
        kept = self._topology_kept(node)
        held = kept.get(("reach", hops))
        if held is None:
            net = node.network
            reach = nx.single_source_shortest_path_length(net.graph, node.id, cutoff=hops)
            candidates = sorted(n for n, d in reach.items() if d > 0 and net.is_up(n) and net.route(node.id, n))
            held = kept[("reach", hops)] = (reach, candidates)
        return held[0], list(held[1])

    def _link_qualities(self, node: Node) -> dict[int, float]:
        """{target: the quality of the link a share to it leaves on}, kept while the topology
        stands. Looking the links up at every share was a tenth of a 1,000-node hour."""
        return self._topology_kept(node).setdefault("qualities", {})

    def _topology_kept(self, node: Node) -> dict:
        """What the node worked out from the topology, kept while the network's topology
        version stands (a network without versions: worked out afresh each time)."""
        version = getattr(node.network, "version", None)
        cache = self.__dict__.setdefault("_topology", {})
        held = cache.get(node.id)
        if version is None or held is None or held[0] != version:
            held = cache[node.id] = (version, {})
        return held[1]

    def fit_to_receiver(self, node: Node, target: int, state: Mapping[str, torch.Tensor] | None = None
                        ) -> tuple[dict, str, dict]:
        """The largest model the receiver can use, at the precision its link deserves.

        Width: a receiver of the same family that reported a narrower width gets the
        sub-model of its width (HeteroFL: the first ceil(r*C) units of each hidden
        layer), cut down further while its reported memory cannot train it. Precision:
        the scenario's, or with ``auto`` chosen from the link's rate and loss. A node
        that trains only some layers (``activated`` < 1) sends only those.
        """
        report = node.reports.get(target)
        family = node.services.families.get(node.learner.family)
        ratio = node.learner.width
        if report is not None and report.family == node.learner.family:
            ratio = min(ratio, report.width)
        if family is not None and report is not None and report.memory > 0:
            # Adam training holds weights, gradients and two moments: 16 bytes a parameter
            while ratio > 0.125 and scaling.param_count(family, ratio) * 16 > report.memory:
                ratio /= 2
        state = dict(state) if state is not None else node.learner.get_state()
        if ratio < node.learner.width and family is not None:
            state = scaling.extract(state, family.shapes(ratio))
        trained = node.trainable()
        if trained is not None:
            state = {name: value for name, value in state.items() if name in trained}
        precision = self.settings.precision
        if precision == "auto":
            link = self._first_link(node, target)  # looked up only here: at every share, it cost
            precision = scaling.choose_precision(scaling.ReceiverProfile(
                memory_bytes=int(report.memory) if report and report.memory else 1 << 30,
                compute_flops=1.0, link_bandwidth=link["bandwidth"], link_loss=min(link["loss"], 0.999)))
        return state, precision, {"family": node.learner.family, "ratio": ratio}

    @staticmethod
    def _first_link(node: Node, target: int) -> Mapping[str, float]:
        """The link a message to ``target`` leaves on: to it, or to the first hop of the
        route (a joiner two hops out asks by a wider pull); a lossless default if none."""
        net = node.network
        if target in net.neighbours(node.id):
            return net.link(node.id, target)
        path = net.route(node.id, target)
        if path and len(path) > 1:
            return net.link(node.id, path[1])
        return {"bandwidth": 1.0, "loss": 0.0, "latency": 0.0}

    # -- what arrives -------------------------------------------------------------------

    def on_control(self, node: Node, record: Control, origin: int) -> None:
        if not isinstance(record, Pull):
            return
        if node.joined_at > -math.inf and self.bootstrapping(node):
            return  # back itself and nothing fresh yet: its stale model would not help
        # a node (re)joining gets the best this node has: what it serves, its
        # neighbourhood's blend, not only its own model, weighed by all the samples
        # behind it, so that the joiner's stale model counts for its own samples only
        state, precision, fitted = self.fit_to_receiver(node, origin, self.blend(node))
        node.send_model(origin, header=node.header(samples=self.served_samples(node), score=node.score()),
                        state=state, precision=precision, scaling=fitted)

    def on_model(self, node: Node, message: ReceivedModel, header: ModelHeader, from_node: int | None) -> None:
        if header.kind != "model":
            return
        if self.settings.merge_window > 0:
            self.hold(node, message)
        else:
            self.accept(node, message, header)

    def on_join(self, node: Node) -> None:
        """Bootstrap: ask for the current models around; the gate picks what helps.

        Those asked answer with what they serve (their neighbourhood's blend). The ask
        goes ``bootstrap_hops`` out, and at least two hops from a node with fewer
        neighbours than it would send to (``fanout``), as an expanding-ring search does
        for routes: one neighbourhood is a narrow view of the fleet (in the digits fleet,
        rejoiners that bootstrapped from their neighbours alone often stayed below the
        fleet's median; from three hops out nearly all reached it within a second).
        """
        node.counters.bootstraps += 1
        node.joined_at = node.now
        node.last_share_score = -math.inf
        hops = self.settings.bootstrap_hops
        if len(node.neighbours()) < self.settings.fanout:
            hops = max(hops, 2)
        if hops > 1:
            node.send_control(BROADCAST, Pull(), ttl=hops - 1)  # forwarded hops - 1 times
        else:
            node.send_control(NEIGHBOURS, Pull())
        node.hello()

    # -- gate, merge, serve ---------------------------------------------------------------

    def merge_weight(self, samples: float, score: Callable[[], float]) -> float:
        """What a model counts for in a merge (``merge_weights``); ``score`` is asked only
        when it counts, since scoring an RL policy means running episodes."""
        if self.settings.merge_weights == "samples":
            return float(samples)
        return float(samples) * max(float(score()), 1e-3)

    def _message_weight(self, header: ModelHeader) -> float:
        return self.merge_weight(header.samples, lambda: 0.5 if header.score is None else header.score)

    def accept(self, node: Node, message: ReceivedModel, header: ModelHeader) -> knowledge.GateDecision:
        """Gate, then merge (same family) or distil (another architecture) an incoming model.

        A merged model is also kept, as the latest from its origin, in the node's
        neighbour cache: the node serves the blend of its own model and these
        (:meth:`served_state`), which is what local training has not yet pulled apart.
        """
        weight = self._message_weight(header)
        outcome = self._absorb(node, [message], [weight])[0]
        self._record(node, message, header, weight, outcome)
        return outcome.decision

    def hold(self, node: Node, message: ReceivedModel) -> None:
        """Keep a model until :meth:`accept_held` (the latest of each origin)."""
        kept = node.held.get(message.origin)
        if kept is None or message.model_version >= kept.model_version:
            node.held[message.origin] = message

    def accept_held(self, node: Node) -> None:
        """Gate the held models, then merge those that pass in one average with the own.

        Merged one at a time, three models that arrive together weigh 1/2, 1/4 and 1/8
        (each merge halves what came before); merged together, each weighs by its samples
        and score. Averaging the fleet's models of one round is data-parallel learning:
        in the robots fleet (TD3+HER reach, 4 robots, every 25-50 env steps) the average
        reached 90 % success in 0.6-0.85x the env steps of a robot alone (2 seeds).
        """
        if not node.held:
            return
        messages = list(node.held.values())
        node.held.clear()
        headers = [ModelHeader.decode(m.manifest.meta) for m in messages]
        weights = [self._message_weight(h) for h in headers]
        outcomes = self._absorb(node, messages, weights)
        for message, header, weight, outcome in zip(messages, headers, weights, outcomes):
            self._record(node, message, header, weight, outcome)

    def _absorb(self, node: Node, messages: list[ReceivedModel], weights: list[float]) -> list[knowledge.Outcome]:
        local_score = node.score()
        local_weight = self.merge_weight(node.learner.num_samples, lambda: local_score)
        return node.absorb_all(messages, weights=weights, tolerance=self.settings.gate_tolerance,
                               local_weight=local_weight)

    def _record(self, node: Node, message: ReceivedModel, header: ModelHeader, weight: float,
                outcome: knowledge.Outcome) -> None:
        decision = outcome.decision
        if outcome.action == "merged":
            node.neighbour_models[message.origin] = (self._cached_state(message.state), message.masks, weight, node.now)
            node.neighbour_samples[message.origin] = header.samples
        if decision.accepted:
            node.counters.accepted += 1
            if not message.complete:
                node.counters.partial_merged += 1
        else:
            node.counters.refused += 1
        node.services.log("gate", node=node.id, origin=message.origin, accepted=decision.accepted,
                          reason=decision.reason, partial=not message.complete)

    @staticmethod
    def _cached_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | np.ndarray]:
        """``state`` as the node's neighbour cache keeps it: a copy in numpy arrays (a
        tensor where numpy has no such dtype), made into tensors again only when served
        (:meth:`blend`). The garbage collector tracks tensors but not numpy arrays, nor a
        dict or tuple that holds only arrays and numbers: a 1,000-node MFD hour caches
        119,000 models, and kept as tensors each outlived the collector's young
        generations and was walked again by every full collection (with the reports,
        the collector took 26-28 % of MFD's CPU against 19 % of gossip's)."""
        kept = {}
        for name, value in state.items():
            try:
                kept[name] = value.numpy().copy()
            except (TypeError, RuntimeError):  # bf16, a tensor on a device, one with gradients
                kept[name] = value.detach().clone()
        return kept

    @staticmethod
    def _as_tensors(state: Mapping[str, torch.Tensor | np.ndarray]) -> Mapping[str, torch.Tensor]:
        if all(type(value) is not np.ndarray for value in state.values()):
            return state
        return {name: torch.from_numpy(value) if type(value) is np.ndarray else value for name, value in state.items()}

    def blend(self, node: Node) -> dict[str, torch.Tensor] | None:
        """The blend of the own model with the fresh cached neighbour models (None: the own alone).

        Entries older than ``serve_max_age`` are stale and left out; weights are the
        samples x score each model came with, the own model's likewise.
        """
        now = node.now
        max_age = self.settings.serve_max_age
        fresh = [(state, masks, weight) for state, masks, weight, t in node.neighbour_models.values()
                 if now - t <= max_age]
        if not fresh:
            return None
        own = node.learner.get_state()
        return knowledge.merge_same_family(
            own, [(self._as_tensors(state), weight) for state, _, weight in fresh], [masks for _, masks, _ in fresh],
            local_weight=self.merge_weight(node.learner.num_samples, node.score))

    def served_state(self, node: Node) -> dict[str, torch.Tensor] | None:
        return self.blend(node) if self.settings.serve_blend else None

    def served_samples(self, node: Node) -> int:
        """The training samples behind :meth:`blend`: the own ones and those of the fresh
        cached models (what a blend stands for when it is weighed against others)."""
        now, max_age = node.now, self.settings.serve_max_age
        return node.learner.num_samples + sum(
            node.neighbour_samples.get(origin, 0) for origin, (_, _, _, t) in node.neighbour_models.items()
            if now - t <= max_age)

    @staticmethod
    def bootstrapping(node: Node) -> bool:
        """Back from an absence and nothing merged since: it knows only its stale model."""
        return not any(t >= node.joined_at for _, _, _, t in node.neighbour_models.values())


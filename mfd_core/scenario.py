"""Scenario files (TOML) to a validated configuration, with errors that name the field.

Configuration is data: a scenario names the topology, the nodes' data split, the
learner, the sharing policy, the faults and the duration. Loading validates all of it
before anything runs: an unknown key, a wrong type or an impossible value (negative
bandwidth, loss above 1, a fault on a node that does not exist) stops with
:class:`ScenarioError` naming the field, e.g. ``topology.loss: must be <= 1``.
"""
from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

POLICIES = ("isolated", "fedavg", "gossip", "mfd", "mfd-travel")


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the field and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Topology(_Strict):
    kind: Literal["ring", "grid", "random_geometric", "small_world", "star", "hierarchy"] = "random_geometric"
    nodes: int = Field(20, ge=1, le=100_000)
    radius: float = Field(0.35, gt=0, le=2.0, description="radio range in the unit square (random_geometric)")
    rows: int | None = Field(None, ge=1)
    k: int = Field(4, ge=2, description="neighbours in the ring lattice (small_world)")
    p: float = Field(0.1, ge=0, le=1, description="rewiring probability (small_world)")
    edges: int = Field(2, ge=1, description="edge servers (hierarchy)")
    bandwidth: float = Field(1.0e6, gt=0, description="bytes per second per link direction")
    latency: float = Field(0.005, ge=0, allow_inf_nan=False, description="seconds per hop")
    loss: float = Field(0.0, ge=0, le=1, description="probability that a packet is lost on a link "
                        "(random_geometric: the base loss; links near the edge of range lose more)")
    degrade: bool = Field(True, description="random_geometric: links lose rate and gain loss with distance")
    corruption: float = Field(0.0, ge=0, le=1, description="probability that a packet gets a bit flipped")
    compute: float = Field(2000.0, gt=0, allow_inf_nan=False, description="training speed, samples per simulated second")
    memory: int = Field(64_000_000, gt=0, description="bytes of model memory per node")


class Data(_Strict):
    dataset: Literal["digits"] = "digits"
    split: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(0.3, gt=0, description="Dirichlet concentration: lower is more non-IID")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out global test set")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="each node's own validation share")


class Learner(_Strict):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: tuple[int, ...] = Field((64, 64), min_length=1)
    width: float = Field(1.0, gt=0, le=1)
    widths: tuple[float, ...] = Field((), description="capacity tiers: width ratios dealt round-robin over nodes")
    kinds: tuple[Literal["mlp", "cnn"], ...] = Field((), description="architectures dealt round-robin over nodes")
    activated: tuple[float, ...] = Field((), description="share of parameters each node trains, round-robin")
    ordered_dropout: bool = Field(True, description="each node also trains the fleet's narrower widths "
                                  "nested in its model (FjORD), so the sub-models it sends work on their own")
    logit_adjustment: float = Field(0.0, ge=0, le=10, description="training adds this times the log of the "
                                    "node's own label frequencies to the logits (Menon et al. 2021): "
                                    "a node holding few classes stops learning just its own prior")
    width_lr_exponent: float = Field(1.5, ge=0, le=4, description="a width-r model (or ordered-dropout "
                                     "sub-model) trains the layers after its first at lr * r**-exponent: "
                                     "a narrow slice of a wide initialisation learns slower at the wide "
                                     "model's step size; 0 trains every width at lr")
    lr: float = Field(0.005, gt=0, le=10)
    batch_size: int = Field(32, ge=1)
    local_steps: int = Field(10, ge=1, description="minibatch steps between sharing decisions")


class Policy(_Strict):
    name: Literal["isolated", "fedavg", "gossip", "mfd", "mfd-travel"] = "mfd"
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "fp32", description="MFD's wire precision; auto: per link from its rate and loss (baselines send fp32)")
    mtu: int = Field(1400, ge=256, le=65535)
    resend: bool = Field(True, description="a receiver asks the origin once for the fragments it lacks")
    # MFD
    share_margin: float = Field(0.02, ge=0, description="score gain since the last share that triggers one")
    max_silence: float = Field(10.0, gt=0, description="share anyway after this many simulated seconds")
    fanout: int = Field(2, ge=1, description="neighbours a model is sent to per share")
    favour_isolated: bool = Field(True, description="MFD: prefer neighbours that report few neighbours")
    gate_tolerance: float = Field(0.15, ge=0, le=1, description="refuse models whose merge scores this much "
                                  "below the local model on the node's own validation data")
    serve_blend: bool = Field(True, description="MFD: serve the blend of the own model and the latest "
                              "gate-approved neighbour models")
    serve_max_age: float = Field(20.0, gt=0, description="neighbour models older than this (s) are not served")
    byte_budget: float = Field(0.0, ge=0, description="bytes per simulated second a node may send (0: unlimited)")
    hello_interval: float = Field(5.0, gt=0, description="seconds between neighbour reports")
    bootstrap_hops: int = Field(1, ge=1, le=8, description="MFD: how many hops out a (re)joining node asks for "
                                "models (one with fewer neighbours than fanout asks at least 2)")
    echo_window: float = Field(0.0, ge=0, description="MFD: neighbours whose model was merged this many seconds "
                               "ago or less are sent to last: they hold most of what would go back (0: off)")
    merge_window: float = Field(0.0, ge=0, description="MFD: seconds a node listens after sharing for its "
                                "neighbours' models of the round, then merges them together (0: each on arrival)")
    share_hops: int = Field(1, ge=1, le=8, description="MFD: how many hops out a node may send its model to "
                            "(1: neighbours only)")
    merge_weights: Literal["samples_score", "samples"] = Field(
        "samples_score", description="MFD: a merged model weighs its samples times its score, or its samples "
        "alone (plain data-parallel averaging: where every score starts near 0, as an RL success rate does, "
        "the first lucky score would otherwise outweigh the rest)")
    travellers: int = Field(4, ge=1, description="travelling models in the fleet (mfd-travel)")
    # FedAvg
    server: int | None = Field(None, ge=0, description="server node (default: the most central)")
    round_timeout: float = Field(5.0, gt=0, description="seconds a FedAvg round waits for clients")
    # gossip
    gossip_interval: float = Field(1.0, gt=0, description="seconds between gossip pushes")


class Fault(_Strict):
    kind: Literal["server_down", "node_leave", "node_join", "link_down", "link_up", "loss"]
    at: float = Field(ge=0, le=1, description="when, as a fraction of the duration")
    nodes: tuple[int, ...] = ()
    link: tuple[int, int] | None = None
    value: float | None = Field(None, ge=0, le=1, description="new loss rate (kind = loss)")
    fraction: float | None = Field(None, gt=0, le=1, description="share of nodes picked at random (node_leave)")
    rejoin_at: float | None = Field(None, ge=0, le=1, description="node_leave: when the nodes come back")


class Scenario(_Strict):
    name: str = "scenario"
    description: str = ""
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    duration: float = Field(60.0, gt=0, allow_inf_nan=False, description="simulated seconds")
    eval_interval: float = Field(2.0, gt=0, description="simulated seconds between measurements")
    topology: Topology = Topology()
    data: Data = Data()
    learner: Learner = Learner()
    policy: Policy = Policy()
    faults: tuple[Fault, ...] = ()

    @model_validator(mode="after")
    def _check_references(self) -> "Scenario":
        n, t = self.topology.nodes, self.topology
        # the topology builders' own limits (mfd_core.network.topology), checked here so
        # that the scenario fails at load, naming the field, not when a run starts
        least = {"ring": 3, "small_world": 3, "star": 2, "random_geometric": 2, "grid": 2,
                 "hierarchy": t.edges + 2}[t.kind]
        if n < least:
            raise ValueError(f"topology.nodes: a {t.kind} topology needs at least {least} nodes, got {n}")
        if t.kind == "small_world" and t.k >= n:
            raise ValueError(f"topology.k: must be smaller than nodes ({n}), got {t.k}")
        if t.kind == "grid":
            rows = t.rows or max(1, math.isqrt(n))
            if n % rows:
                raise ValueError(f"topology.rows: {rows} rows do not divide {n} nodes"
                                 + ("" if t.rows else " (the default, about sqrt(nodes)); set rows"))
        for name in ("widths", "activated"):
            for v in getattr(self.learner, name):
                if not 0 < v <= 1:
                    raise ValueError(f"learner.{name}: {v} is not in (0, 1]")
        for i, fault in enumerate(self.faults):
            for node in fault.nodes:
                if not 0 <= node < n:
                    raise ValueError(f"faults.{i}.nodes: node {node} does not exist (nodes are 0..{n - 1})")
            if fault.link is not None and not all(0 <= v < n for v in fault.link):
                raise ValueError(f"faults.{i}.link: {fault.link} names a node that does not exist")
            if fault.kind in ("link_down", "link_up") and fault.link is None:
                raise ValueError(f"faults.{i}.link: required for {fault.kind}")
            if fault.kind == "loss" and fault.value is None:
                raise ValueError(f"faults.{i}.value: required for kind = loss")
            if fault.kind == "node_leave" and not fault.nodes and fault.fraction is None:
                raise ValueError(f"faults.{i}: node_leave needs nodes or fraction")
            if fault.rejoin_at is not None and fault.rejoin_at <= fault.at:
                raise ValueError(f"faults.{i}.rejoin_at: must come after at ({fault.at})")
        if self.policy.server is not None and self.policy.server >= n:
            raise ValueError(f"policy.server: node {self.policy.server} does not exist (nodes are 0..{n - 1})")
        if self.eval_interval > self.duration:
            raise ValueError("eval_interval: longer than the duration")
        return self

    def with_policy(self, name: str, **changes: Any) -> "Scenario":
        """The same scenario under another sharing policy (what `mfd compare` runs)."""
        return self.model_copy(update={"policy": self.policy.model_copy(update={"name": name, **changes})})

    def replace(self, **changes: Any) -> "Scenario":
        """A validated copy with nested changes, e.g. ``replace(topology={"loss": 0.2})``."""
        doc = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        return from_dict(doc)


def format_validation_error(err: ValidationError) -> str:
    """One line naming every bad field ("topology.loss: ..."): for every config file of the suite."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {msg}" if where else msg)
    return "; ".join(lines)


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers; anything else JSON lacks as text (a wrong type then)."""
    return value.item() if hasattr(value, "item") else str(value)


def from_dict(doc: dict[str, Any]) -> Scenario:
    try:
        # Strict, read as JSON: a TOML value already has its type, so a string or a boolean
        # where a number belongs (nodes = "20", nodes = true) is a wrong type, not something
        # to coerce; arrays fill tuples and integers floats, as JSON allows.
        return Scenario.model_validate_json(json.dumps(doc, default=_plain), strict=True)
    except ValidationError as err:
        raise ScenarioError(format_validation_error(err)) from None


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file. :raises ScenarioError: naming the bad field."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None
    try:
        return from_dict(doc)
    except ScenarioError as err:
        raise ScenarioError(f"{path}: {err}") from None


def reference_markdown() -> str:
    """The scenario file reference (``docs/scenarios.md``), generated from the schema so it cannot drift."""
    lines = ["# Scenario files", "",
             "A scenario is a TOML file: the topology, the data split, the learner, the sharing policy,",
             "the faults and the duration. `mfd run FILE` validates it before anything runs; an unknown",
             "key, a wrong type or an impossible value stops with a message naming the field.",
             "Shipped scenarios are in `apps/scenarios/` (`mfd run --list`).", "",
             "This page is generated: `python -m mfd_core.scenario > docs/scenarios.md`.", ""]
    sections = [("(top level)", Scenario), ("[topology]", Topology), ("[data]", Data), ("[learner]", Learner),
                ("[policy]", Policy), ("[[faults]]", Fault)]
    for title, model in sections:
        lines += [f"## {title}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, f in model.model_fields.items():
            if isinstance(f.default, BaseModel):
                continue
            if get_origin(f.annotation) is Literal:
                kind = " | ".join(repr(a) for a in get_args(f.annotation))
            elif isinstance(f.annotation, type):
                kind = f.annotation.__name__
            else:
                kind = str(f.annotation).replace("typing.", "").replace("mfd_core.scenario.", "")
                kind = kind.replace("__main__.", "")
            default = "required" if f.is_required() else repr(f.default)
            symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "at least", "max_length": "at most"}
            bounds = ", ".join(f"{sym} {getattr(m, attr)}" for m in f.metadata for attr, sym in symbols.items()
                               if getattr(m, attr, None) is not None)
            meaning = (f.description or "") + (f" ({bounds})" if bounds else "")
            kind = kind.replace("|", "\\|")  # a pipe inside a table cell must be escaped
            lines.append(f"| `{name}` | `{kind}` | `{default}` | {meaning} |".replace("|  |", "| |"))
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())

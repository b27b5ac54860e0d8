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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .process import (POLICIES, FedAvgSettings, GossipSettings, IsolatedSettings, MFDSettings, PolicySettings,
                      SharingPolicy, Transport, TravellingSettings, policy_class)


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


# "package.module:function": a hook to a user's own data or model, imported when a run is built.
HOOK = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def _hook_or(names: tuple[str, ...], what: str):
    def check(value: str) -> str:
        import re

        if value in names or re.match(HOOK, value):
            return value
        raise ValueError(f"{value!r} is not {', '.join(map(repr, names))} or a 'package.module:function' {what}")
    return check


class Data(_Strict):
    dataset: str = Field("digits", description="'digits' (scikit-learn's, bundled), or 'package.module:function' "
                         "returning (inputs, labels) arrays or an mfd_core.datasets.Dataset: your own data")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _hook_or(("digits",), "data hook")(value)

    split: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(0.3, gt=0, description="Dirichlet concentration: lower is more non-IID")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out global test set")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="each node's own validation share")


class Learner(_Strict):
    kind: str = Field("mlp", description="'mlp', 'cnn', or 'package.module:function' that takes (features, "
                      "classes) and returns a torch.nn.Module: your own model (one width: it is not sliced)")
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

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        return _hook_or(("mlp", "cnn"), "model hook")(value)
    batch_size: int = Field(32, ge=1)
    local_steps: int = Field(10, ge=1, description="minibatch steps between sharing decisions")


# the [policy] table's sub-tables: one per built-in policy, holding that policy's settings
POLICY_TABLES: dict[str, tuple[str, type[PolicySettings]]] = {
    "isolated": ("isolated", IsolatedSettings), "fedavg": ("fedavg", FedAvgSettings),
    "gossip": ("gossip", GossipSettings), "mfd": ("mfd", MFDSettings), "mfd_travel": ("mfd-travel", TravellingSettings),
}
_TABLE_OF_POLICY = {policy: table for table, (policy, _) in POLICY_TABLES.items()}
_OWN_POLICY_KEYS = ("name", *Transport.model_fields)


def _route_policy_keys(doc: dict[str, Any], *, override: bool) -> dict[str, Any]:
    """Flat ``[policy]`` keys into the sub-table of every policy whose settings have them.

    A file may write ``fanout = 4`` under ``[policy]`` (it goes to mfd and mfd-travel) or
    under ``[policy.mfd]``; a key given both ways is refused in a file (``override``
    False) and wins in :meth:`Policy.replace` (``override`` True).
    """
    out: dict[str, Any] = {}
    for key, value in doc.items():
        table = _TABLE_OF_POLICY.get(key, key)
        if key in _OWN_POLICY_KEYS:
            out[key] = value
        elif table in POLICY_TABLES:
            given = value.model_dump() if isinstance(value, BaseModel) else value
            if isinstance(given, dict) and isinstance(out.get(table), dict):
                out[table] = {**given, **out[table]} if override else {**out[table], **given}
            else:
                out[table] = given
    for key, value in doc.items():
        if key in _OWN_POLICY_KEYS or _TABLE_OF_POLICY.get(key, key) in POLICY_TABLES:
            continue
        owners = [table for table, (_, settings) in POLICY_TABLES.items() if key in settings.model_fields]
        if not owners:
            out[key] = value  # refused below as an unknown key, with its name
        for table in owners:
            nested = out.setdefault(table, {})
            if not isinstance(nested, dict):
                continue  # a sub-table of the wrong type: refused below
            if key in nested and not override and nested[key] != value:
                raise ValueError(f"{key}: given both under [policy] and under [policy.{POLICY_TABLES[table][0]}]")
            nested[key] = value
    return out


class Policy(_Strict):
    """The ``[policy]`` table: which sharing policy runs, how every node talks, and each
    policy's own settings (flat keys go to every policy that has them; a
    ``[policy.<name>]`` sub-table sets one policy's), so one file serves a comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field("mfd", description="the sharing policy: " + ", ".join(repr(p) for p in POLICIES))
    mtu: int = Field(1400, ge=256, le=65535, description="largest datagram a node sends (bytes)")
    resend: bool = Field(True, description="a receiver asks the origin for the fragments it lacks")
    isolated: IsolatedSettings = IsolatedSettings()
    fedavg: FedAvgSettings = FedAvgSettings()
    gossip: GossipSettings = GossipSettings()
    mfd: MFDSettings = MFDSettings()
    mfd_travel: TravellingSettings = Field(TravellingSettings(), alias="mfd-travel")

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, doc: Any) -> Any:
        return _route_policy_keys(doc, override=False) if isinstance(doc, dict) else doc

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
        return name

    @property
    def transport(self) -> Transport:
        return Transport(mtu=self.mtu, resend=self.resend)

    def settings_for(self, name: str | None = None) -> PolicySettings:
        """The settings of policy ``name`` (the chosen one by default)."""
        name = name or self.name
        table = _TABLE_OF_POLICY.get(name)
        return getattr(self, table) if table else policy_class(name).Settings()

    @property
    def settings(self) -> PolicySettings:
        """The chosen policy's settings."""
        return self.settings_for()

    def make(self, name: str | None = None) -> SharingPolicy:
        """A new policy object: ``name`` (the chosen one by default) with its settings."""
        name = name or self.name
        return policy_class(name)(self.settings_for(name))

    def replace(self, **changes: Any) -> "Policy":
        """A validated copy; flat keys change every policy that has them, as in a file."""
        try:
            doc = _route_policy_keys(self.model_dump(by_alias=True), override=False)
            for key, value in _route_policy_keys(changes, override=True).items():
                doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) \
                    else value
        except ValueError as err:
            raise ScenarioError(f"policy.{err}") from None
        try:
            return Policy.model_validate_json(json.dumps(doc, default=_plain), strict=True)
        except ValidationError as err:
            raise ScenarioError(format_validation_error(err, prefix="policy")) from None


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
    # a simulated day: a run longer than that does not end in a working day on one machine
    duration: float = Field(60.0, gt=0, le=86_400, allow_inf_nan=False, description="simulated seconds")
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
        if ":" in self.learner.kind and (self.learner.width != 1 or self.learner.widths or self.learner.kinds):
            raise ValueError("learner.kind: a model of your own runs at one width (no width, widths or kinds)")
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
        server = self.policy.fedavg.server
        if server is not None and server >= n:
            raise ValueError(f"policy.server: node {server} does not exist (nodes are 0..{n - 1})")
        if self.eval_interval > self.duration:
            raise ValueError("eval_interval: longer than the duration")
        return self

    def with_policy(self, name: str, **changes: Any) -> "Scenario":
        """The same scenario under another sharing policy (what `mfd compare` runs);
        ``changes`` are policy settings, flat as in a file."""
        return self.model_copy(update={"policy": self.policy.replace(name=name, **changes)})

    def replace(self, **changes: Any) -> "Scenario":
        """A validated copy with nested changes, e.g. ``replace(topology={"loss": 0.2})``."""
        doc = self.model_dump(by_alias=True)
        for key, value in changes.items():
            if key == "policy" and isinstance(value, dict):
                doc[key] = self.policy.replace(**value).model_dump(by_alias=True)
            elif isinstance(value, dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        return from_dict(doc)


def format_validation_error(err: ValidationError, *, prefix: str = "") -> str:
    """One line naming every bad field ("topology.loss: ..."): for every config file of the suite.

    A flat ``[policy]`` key is checked in every policy table that has it; an error found
    in each of them is named once, as the file wrote it (``policy.fanout``, not
    ``policy.mfd.fanout; policy.mfd_travel.fanout``).
    """
    lines: list[str] = []
    for e in err.errors():
        loc = [str(p) for p in (prefix, *e["loc"]) if p != ""]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        loc = _flat_policy_loc(loc)
        where = ".".join(loc)
        line = f"{where}: {msg}" if where else msg
        if line not in lines:
            lines.append(line)
    return "; ".join(lines)


def _flat_policy_loc(loc: list[str]) -> list[str]:
    """``[..., "mfd", "fanout"]`` -> ``[..., "fanout"]`` where the key belongs to a policy table."""
    for i, part in enumerate(loc[:-1]):
        table = _TABLE_OF_POLICY.get(part, part)
        if table in POLICY_TABLES and loc[i + 1] in POLICY_TABLES[table][1].model_fields:
            return loc[:i] + loc[i + 1:]
    return loc


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
    policy_note = ("Each sharing policy has its own settings, below. A key written directly under "
                   "`[policy]` goes to every policy that has it (so one file serves `mfd compare`); "
                   "a `[policy.<name>]` sub-table (e.g. `[policy.mfd]`, `[policy.mfd-travel]`) sets one "
                   "policy's.")
    sections = [("(top level)", Scenario, ""), ("[topology]", Topology, ""), ("[data]", Data, ""),
                ("[learner]", Learner, ""), ("[policy]", Policy, policy_note)]
    sections += [(f"[policy.{policy}]", settings, (settings.__doc__ or "").strip())
                 for policy, settings in POLICY_TABLES.values()]
    sections += [("[[faults]]", Fault, "")]
    for title, model, note in sections:
        lines += [f"## {title}", ""] + ([note, ""] if note else [])
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
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

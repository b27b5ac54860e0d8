"""LM4Net scenario files: the radio scenario plus how its stations learn and share.

An app scenario is one TOML file (shipped ones in ``apps/basestation/scenarios/``)::

    preset = "hotspot"      # start from an env preset (envs/basestation/scenarios)
    [basestation]           # env fields, on top of the preset (BaseStationConfig)
    episode_steps = 100
    [training]              # PPO and the simulated run (TrainingSettings)
    rounds = 60
    [x2]                    # the links between stations (X2Link)
    latency = 0.001
    [sharing]               # the MFD / FedAvg settings (mfd_core.scenario.Policy)
    precision = "fp16"

Every table is validated on load and a bad value stops with its dotted name
(``training.rounds: ...``, ``basestation.n_macro_cells: ...``); the env's own checks
(:class:`envs.basestation.ConfigError`) name the field of the radio scenario. A bare
env preset name (``uniform``) or an env TOML file works too: the app's defaults fill in.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from envs.basestation import SCENARIO_NAMES, BaseStationConfig, ConfigError, load_scenario
from mfd_core.scenario import Policy, ScenarioError, format_validation_error

__all__ = ["AppScenario", "AppScenarioError", "TrainingSettings", "X2Link", "load_app_scenario",
           "shipped_scenarios", "SCENARIO_DIR"]

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class AppScenarioError(ValueError):
    """A scenario the app cannot run; the message starts with the dotted field name."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A station's action heads, in the order its policy network emits them.
ACTION_HEADS = ("power", "cio", "sleep")


class TrainingSettings(_Strict):
    """How the stations learn (SB3 PPO per station) and how long the simulated run lasts.

    One *round* is one training chunk of ``chunk_steps`` environment steps followed by a
    PPO update; it costs one simulated second of a station's compute.
    """

    rounds: int = Field(60, ge=1, le=100_000, description="training chunks per station (simulated seconds)")
    chunk_steps: int = Field(100, ge=8, le=10_000, description="env steps per chunk = PPO n_steps")
    eval_steps: int = Field(50, ge=5, le=10_000, description="steps of one scoring episode")
    eval_interval: float = Field(5.0, gt=0, description="simulated seconds between measurements")
    hidden: tuple[int, ...] = Field((64, 64), min_length=1, max_length=4, description="policy/value MLP widths")
    lr: float = Field(1e-3, gt=0, le=1)
    n_epochs: int = Field(10, ge=1, le=100)
    batch_size: int = Field(50, ge=2)
    gamma: float = Field(0.7, ge=0, lt=1, description="discount: power, offsets and sleep act within seconds")
    gae_lambda: float = Field(0.8, ge=0, le=1)
    ent_coef: float = Field(0.01, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0, le=1)
    reward: str = Field("hood", pattern="^(hood|own|difference)$",
                        description='"hood": mean reward of the station and its X2 neighbours; "own": its own; '
                        '"difference": what the station\'s action added to the whole network\'s reward this step '
                        '(the same step replayed with that station static: its counterfactual), so '
                        'it is credited for its neighbours\' users and not for the others\' exploration')
    difference_steps: int = Field(1, ge=1, le=20, description='with reward = "difference": steps each '
                                  'counterfactual replays (an offset moves users only after time-to-trigger)')
    hold_steps: int = Field(1, ge=1, le=50, description="stations decide every this many env steps and hold "
                            "the action in between (one PPO transition per decision): an offset's handovers "
                            "and the arrivals it steers play out over many steps")
    # On hotspot (40 rounds) every choice scored MFD's stations better on their twins
    # than they then did together: PF utility -12 % (static), -35 % (peers), -10 %
    # (alike, without the deploy gate) against full power. "static" is the least wrong.
    twin: str = Field("static", pattern="^(peers|static|alike)$",
                      description='how a station scores a model on its digital twin: "peers": it acts with '
                      'the model, the neighbours whose models it received (MFD) act with those, the rest '
                      'keep the static configuration; "static": all others static; "alike": every '
                      'station acts with the model')
    deploy: str = Field("if_better", pattern="^(if_better|always)$",
                        description='"if_better": a station runs a newly trained model only when its '
                        'validation twin scores it at least as well as the running one (FedAvg clients '
                        'run the global model)')
    action: str = Field("residual", pattern="^(residual|absolute)$",
                        description='"residual": a station\'s policy answers a correction to the tuned MLB '
                        'rule\'s power, offset and sleep (apps/basestation/residual.py), so an untrained '
                        'station plays the rule exactly and its twin scores 1.0 for "as good as the rule"; '
                        '"absolute": the policy chooses them outright (static configuration = full power)')
    residual_steps: int = Field(2, ge=1, le=3, description='with action = "residual": the largest correction '
                                'of power (levels) and offset (steps of the offset list)')
    residual_raise_power: bool = Field(False, description='with action = "residual": whether a correction may '
                                       'raise power above the rule\'s level (by default only lower it: PF at no '
                                       'more energy than the rule)')
    learner: str = Field("ppo", pattern="^(ppo|lookahead)$",
                         description='how a station learns: "ppo": the app\'s PPO on its own transitions; '
                         '"lookahead" (residual actions only): imitate the best correction judged by a '
                         'look-ahead on forks of the training network with the others on the rule '
                         '(apps/basestation/lookahead.py), cross-entropy, n_epochs passes a round')
    lookahead_episodes: int = Field(3, ge=1, le=50, description='with learner = "lookahead": training '
                                    'episodes labelled (seeds 30000 + 100 x seed + j; the last is held out to '
                                    'measure how well the stations predict their labels)')
    lookahead_horizon: int = Field(3, ge=1, le=20, description='with learner = "lookahead": env steps each '
                                   'candidate correction is replayed for (an offset moves users only after '
                                   'time-to-trigger)')
    lookahead_margin: float = Field(0.5, ge=0, description='with learner = "lookahead": PF utility (summed over '
                                    'the horizon) a correction must gain over none to be labelled')
    # hotspot, seed 0, 4 episodes, one model on every station's rows, held-out episode: with
    # hindsight labels (0) its choices gained 0.00 then -0.24 PF per station-step (3 steps)
    # as it fitted them; with 4 futures +0.03..+0.11 (labels' own gain 1.25): what pays on the
    # episode's own future is mostly that future's luck, which no observation foretells
    lookahead_futures: int = Field(4, ge=0, le=32, description='with learner = "lookahead": 0: judge each '
                                   'candidate on the episode\'s own future (hindsight); F: on the mean of F '
                                   'other seeded futures, the same for every candidate (the correction that '
                                   'pays in expectation from this state)')
    lookahead_heads: tuple[str, ...] = Field(ACTION_HEADS, min_length=1, description='with learner '
                                             '= "lookahead": the heads a label may correct (unpinned for the '
                                             'imitation even when listed in pinned)')
    lookahead_ppo: bool = Field(False, description='with learner = "lookahead": also run the PPO update each '
                                'round after imitating (fine-tuning; pinned heads stay pinned for exploration)')
    static_bias: float = Field(2.0, ge=0, le=10, description="initial logit bias of each action head towards "
                               "the static choice (awake gets one more); 0: a uniform first policy")
    pinned: tuple[str, ...] = Field((), description='action heads ("power", "cio", "sleep") every learner '
                                    '(stations and central controller alike) keeps at the static choice: '
                                    'where a head only costs (lower power, sleep at full load) its exploration '
                                    'drowns the others\' signal')
    twin_episodes: int = Field(1, ge=1, le=20, description="twin episodes (consecutive seeds) a score averages: "
                               "one episode fits the score to one draw of hotspots and users")
    central_steps: int | None = Field(None, ge=100, description="central PPO env steps (default rounds x chunk_steps)")
    eval_seeds: tuple[int, ...] = Field((100, 101, 102), min_length=1, description="seeds `evaluate` plays")

    @model_validator(mode="after")
    def _check(self) -> "TrainingSettings":
        if self.batch_size > self.chunk_steps:
            raise ValueError(f"batch_size: {self.batch_size} is larger than chunk_steps ({self.chunk_steps})")
        for field, heads in (("pinned", self.pinned), ("lookahead_heads", self.lookahead_heads)):
            bad = [h for h in heads if h not in ACTION_HEADS]
            if bad:
                raise ValueError(f"{field}: unknown action head {bad[0]!r}; heads: {', '.join(ACTION_HEADS)}")
        if self.learner == "lookahead" and self.action != "residual":
            raise ValueError('learner: "lookahead" labels corrections to the rule: it needs action = "residual"')
        if len(set(self.pinned)) == 3:
            raise ValueError("pinned: pinning every head leaves nothing to learn")
        if any(h < 1 or h > 4096 for h in self.hidden):
            raise ValueError("hidden: widths must be within 1..4096")
        return self


class X2Link(_Strict):
    """The inter-station links: fibre or microwave backhaul, fast and nearly lossless."""

    bandwidth: float = Field(1.25e8, gt=0, description="bytes/s per direction (1 Gbit/s)")
    latency: float = Field(0.001, ge=0, le=1, description="seconds per hop")
    loss: float = Field(0.0, ge=0, le=1)
    corruption: float = Field(0.0, ge=0, le=1)


# MFD as the app runs it by default: half-precision models, a share when the station's
# score rose by 1 % of the static configuration's, at least every 5 rounds, two
# neighbours per share, and a gate that refuses a 2 % drop (a joining station asks its
# neighbours only; no echo window; a station shares with its neighbours only, however few,
# and at least every 5 rounds whatever its neighbours or its links' loss: the settings the app
# was measured with).
DEFAULT_SHARING = dict(name="mfd", precision="fp16", share_margin=0.01, max_silence=5.0, fanout=2,
                       gate_tolerance=0.02, serve_blend=False, serve_max_age=10.0, hello_interval=2.0,
                       round_timeout=3.0, bootstrap_hops=1, echo_window=0.0, sparse_share_hops=1,
                       silence_density=0.0, clean_silence=1.0)


@dataclass(frozen=True)
class AppScenario:
    """A validated LM4Net scenario: radio config, training, X2 links, sharing settings."""

    name: str
    env: BaseStationConfig
    training: TrainingSettings
    x2: X2Link
    sharing: Policy
    source: str = ""

    def with_training(self, **changes: Any) -> "AppScenario":
        """A copy with training fields changed (validated), e.g. ``rounds=4``."""
        doc = {**self.training.model_dump(), **changes}
        return AppScenario(self.name, self.env, _model(TrainingSettings, doc, "training"), self.x2,
                           self.sharing, self.source)

    def with_env(self, **changes: Any) -> "AppScenario":
        """A copy with radio fields changed (validated by the env)."""
        try:
            env = self.env.replace(**changes)
        except ConfigError as err:
            raise AppScenarioError(f"basestation.{err}") from None
        return AppScenario(self.name, env, self.training, self.x2, self.sharing, self.source)

    def with_sharing(self, **changes: Any) -> "AppScenario":
        try:
            sharing = self.sharing.replace(**changes)
        except ScenarioError as err:
            raise AppScenarioError(f"sharing.{str(err).removeprefix('policy.')}") from None
        return AppScenario(self.name, self.env, self.training, self.x2, sharing, self.source)


def _model(cls: type[BaseModel], doc: Any, where: str):
    if not isinstance(doc, dict):
        raise AppScenarioError(f"{where}: expected a table, got {type(doc).__name__}")
    try:
        return cls.model_validate(doc)
    except ValidationError as err:
        raise AppScenarioError(format_validation_error(err, prefix=where)) from None


def shipped_scenarios() -> list[str]:
    """Names of the app scenarios in ``apps/basestation/scenarios/``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def _resolve(name_or_path: str | Path) -> tuple[Path | None, str | None]:
    """(app file, env preset): a shipped app scenario, a path, or a bare env preset."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise AppScenarioError(f"scenario: no such file {str(path)!r}")
        return path, None
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped, None
    if str(name_or_path) in SCENARIO_NAMES:
        return None, str(name_or_path)
    raise AppScenarioError(f"scenario: {str(name_or_path)!r} is neither a shipped scenario "
                           f"({', '.join(shipped_scenarios())}) nor a TOML file")


APP_KEYS = ("name", "description", "preset", "basestation", "training", "x2", "sharing")


def load_app_scenario(name_or_path: str | Path) -> AppScenario:
    """Read and validate an app scenario (shipped name, TOML path or env preset name).

    :raises AppScenarioError: naming the field at fault, e.g. ``training.rounds: ...``.
    """
    path, preset = _resolve(name_or_path)
    if path is None:
        doc: dict[str, Any] = {"preset": preset}
        source = f"env preset {preset}"
    else:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise AppScenarioError(f"{path}: not valid TOML: {err}") from None
        source = str(path)
    try:
        return from_dict(doc, source=source)
    except AppScenarioError as err:
        raise AppScenarioError(f"{err} (in {source})") from None


def from_dict(doc: dict[str, Any], source: str = "") -> AppScenario:
    unknown = sorted(k for k in doc if k not in APP_KEYS)
    if unknown:
        # a radio field at top level is the commonest slip: say where it belongs
        hint = " (radio fields go under [basestation])" if any(k in BaseStationConfig.__dataclass_fields__
                                                                for k in unknown) else ""
        raise AppScenarioError(f"{unknown[0]}: unknown key; known keys: {', '.join(APP_KEYS)}{hint}")
    env_fields = doc.get("basestation", {})
    if not isinstance(env_fields, dict):
        raise AppScenarioError(f"basestation: expected a table, got {type(env_fields).__name__}")
    preset = doc.get("preset")
    try:
        if preset is not None:
            if not isinstance(preset, str):
                raise AppScenarioError(f"preset: expected a preset name, got {preset!r}")
            if preset not in SCENARIO_NAMES:
                raise AppScenarioError(f"preset: unknown preset {preset!r}; presets: {', '.join(SCENARIO_NAMES)}")
            env = load_scenario(preset, **env_fields)
        else:
            env = BaseStationConfig.from_dict(env_fields)
    except ConfigError as err:
        raise AppScenarioError(f"basestation.{err}") from None
    training = _model(TrainingSettings, doc.get("training", {}), "training")
    x2 = _model(X2Link, doc.get("x2", {}), "x2")
    sharing_doc = doc.get("sharing", {})
    if not isinstance(sharing_doc, dict):
        raise AppScenarioError(f"sharing: expected a table, got {type(sharing_doc).__name__}")
    sharing = _model(Policy, {**DEFAULT_SHARING, **sharing_doc}, "sharing")
    n = env.n_stations
    server = sharing.fedavg.server
    if server is not None and not 0 <= server < n:
        raise AppScenarioError(f"sharing.server: station {server} does not exist (0..{n - 1})")
    if server is not None and server in env.outage_stations:
        raise AppScenarioError(f"sharing.server: station {server} is in outage_stations")
    name = doc.get("name", env.name if env.name != "custom" else (preset or "custom"))
    if not isinstance(name, str) or not name or "/" in name:
        raise AppScenarioError(f"name: expected a non-empty name without '/', got {name!r}")
    return AppScenario(name=name, env=env, training=training, x2=x2, sharing=sharing, source=source)

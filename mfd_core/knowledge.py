"""Heterogeneous sharing: merge models of one family, distil between families, gate both.

What a node does with a model that reached it (DESIGN.md, property 3):

- same family (any width, possibly partial): weighted merge of the overlapping
  parameters (:func:`merge_same_family`, HeteroFL's overlap average);
- another architecture: the incoming model is a teacher, distilled into the local model
  on the node's own inputs; no data leaves the node;
- either way a :class:`Gate` first scores the would-be result on the node's own
  validation data and refuses it if the node would get worse (stale, broken, poisoned).

:func:`absorb_knowledge` is the one entry point the process calls.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mfd_core.scaling import ModelFamily, merge_overlapping

if TYPE_CHECKING:  # runtime import would cycle: learners use distillation_loss
    from mfd_core.learners.base import Learner

__all__ = [
    "DISTILLATION_KINDS",
    "distillation_loss",
    "gaussian_kl",
    "merge_same_family",
    "GateDecision",
    "Gate",
    "IncomingModel",
    "Outcome",
    "AbsorbResult",
    "absorb_knowledge",
]

Outputs = Tensor | tuple[Tensor, ...]

DISTILLATION_KINDS = ("classification", "categorical", "regression", "deterministic", "gaussian")


def gaussian_kl(p_mean: Tensor, p_log_std: Tensor, q_mean: Tensor, q_log_std: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dim (closed form).

    ``log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2`` per dimension.

    :return: one value per leading index (per sample).
    """
    var_p, var_q = torch.exp(2 * p_log_std), torch.exp(2 * q_log_std)
    per_dim = q_log_std - p_log_std + (var_p + (p_mean - q_mean) ** 2) / (2 * var_q) - 0.5
    return per_dim.sum(dim=-1)


def distillation_loss(student_out: Outputs, teacher_out: Outputs, kind: str, temperature: float = 2.0) -> Tensor:
    """Divergence of a student's outputs from a teacher's, averaged over the batch.

    Always ``KL(teacher || student)`` where it is a KL: the student must cover what the
    teacher does (as in Hinton et al. 2015 and policy distillation, Rusu et al. 2016).

    :param student_out: student outputs; ``(mean, log_std)`` for ``"gaussian"``.
    :param teacher_out: teacher outputs, same layout (no gradient needed).
    :param kind: ``"classification"``: KL of temperature-softened softmaxes over logits,
        times ``T^2`` so that gradients keep their size across temperatures (Hinton et
        al. 2015); ``"categorical"``: KL of the policies' own action distributions
        (logits, no temperature); ``"regression"`` / ``"deterministic"``: MSE;
        ``"gaussian"``: closed-form KL of diagonal Gaussian policies.
    :param temperature: softening temperature for ``"classification"``.
    :return: scalar tensor.
    """
    if kind in ("classification", "categorical"):
        t = temperature if kind == "classification" else 1.0
        if t <= 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        log_p_teacher = F.log_softmax(teacher_out / t, dim=-1)
        log_p_student = F.log_softmax(student_out / t, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * (t * t)
    if kind in ("regression", "deterministic"):
        return F.mse_loss(student_out, teacher_out)
    if kind == "gaussian":
        (s_mean, s_log_std), (t_mean, t_log_std) = student_out, teacher_out
        s_log_std, t_log_std = torch.broadcast_to(s_log_std, s_mean.shape), torch.broadcast_to(t_log_std, t_mean.shape)
        return gaussian_kl(t_mean, t_log_std, s_mean, s_log_std).mean()
    raise ValueError(f"unknown distillation kind {kind!r}; expected one of {DISTILLATION_KINDS}")


def merge_same_family(
    local_state: Mapping[str, Tensor],
    incoming: Sequence[tuple[Mapping[str, Tensor], float]],
    masks: Sequence[Mapping[str, Tensor] | None] | None = None,
    *,
    local_weight: float = 1.0,
    silent_units: bool = True,
) -> dict[str, Tensor]:
    """Weighted merge of models of one family, any widths, possibly partial.

    Each local element becomes the weighted average of itself and the incoming values
    that cover it (:func:`mfd_core.scaling.merge_overlapping`); masked-out or missing
    elements contribute nothing. A narrower model counts as the wider one with its
    missing units switched off (``silent_units``): the weights from those units into the
    ones it has average with zeros. In the digits tiers fleet this raised the mean
    accuracy by 1-3 points a seed over HeteroFL's plain overlap average, whose wide
    models served extra units that only the few wide nodes had trained.

    :param local_state: the receiver's state (fixes the shapes; not modified).
    :param incoming: ``(state, weight)`` per model, weight e.g. the sender's sample count.
    :param masks: per incoming model ``None`` or ``{name: bool tensor}`` of what arrived.
    :param local_weight: weight of the local model (e.g. its own sample count).
    :param silent_units: as in :func:`mfd_core.scaling.merge_overlapping`; ``False``
        gives HeteroFL's overlap average.
    """
    return merge_overlapping(local_state, incoming, base_weight=local_weight, masks=masks, silent_units=silent_units)


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided about one candidate.

    :param accepted: whether the candidate may be installed.
    :param reason: why, in words (for logs and reports).
    :param local_score: the node's score before.
    :param candidate_score: the candidate's score (``nan`` when not scored).
    """

    accepted: bool
    reason: str
    local_score: float
    candidate_score: float


def _all_finite(state: Mapping[str, Tensor]) -> bool:
    # One reduction a tensor (a float64 sum is NaN or infinite exactly when an element is,
    # short of 1e308 in total): for a fleet of small models the per-call cost is the cost,
    # and numpy's reduction costs two thirds of torch's (a 1,000-node MFD hour gates
    # 119,000 merges: 0.18 s less); torch's where numpy has no view (bf16, gradients).
    for value in state.values():
        if not value.is_floating_point():
            continue
        try:
            total = np.add.reduce(value.numpy(), axis=None, dtype=np.float64)
        except (TypeError, RuntimeError):
            total = value.detach().sum(dtype=torch.float64)
        if not math.isfinite(total):
            return False
    return True


class Gate:
    """Refuses what would make the node worse on its own validation data.

    Accepts when ``candidate_score >= local_score - tolerance``. A tolerance in score
    units absorbs validation noise: a node holds tens of validation samples, where one
    sample is 1-2 % of accuracy, and refusing every merge that is not strictly better on
    them would refuse neutral merges that help on unseen data.

    :param tolerance: allowed drop of the score (units of :meth:`Learner.score`).
    :param trial_steps: distillation steps of the trial run for a teacher of another
        architecture.
    """

    def __init__(self, tolerance: float = 0.02, trial_steps: int = 100) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.tolerance, self.trial_steps = tolerance, trial_steps

    def _decide(self, local: float, candidate: float, what: str) -> GateDecision:
        if not math.isfinite(candidate):
            return GateDecision(False, f"{what} scores {candidate}", local, candidate)
        if candidate >= local - self.tolerance:
            return GateDecision(True, f"{what} scores {candidate:.4g} vs local {local:.4g}", local, candidate)
        return GateDecision(
            False, f"{what} scores {candidate:.4g}, below local {local:.4g} - tolerance {self.tolerance:g}", local, candidate
        )

    def check(self, learner: Learner, candidate_state: Mapping[str, Tensor], local_score: float | None = None) -> GateDecision:
        """Score a candidate state of the local shapes (e.g. a merge result) against the node.

        :param learner: the node's learner (not changed).
        :param candidate_state: state that would be installed.
        :param local_score: the node's current score, if already known.
        """
        local = learner.score() if local_score is None else local_score
        if not _all_finite(candidate_state):
            return GateDecision(False, "candidate has non-finite parameters", local, math.nan)
        return self._decide(local, learner.score(candidate_state), "candidate")

    def check_teacher(
        self,
        learner: Learner,
        teacher: Callable[[Tensor], Outputs],
        kind: str | None = None,
        steps: int | None = None,
        local_score: float | None = None,
        temperature: float = 2.0,
    ) -> tuple[GateDecision, Learner | None]:
        """Gate a teacher of another architecture.

        First the teacher itself is scored on the node's validation data where the
        learner can (:meth:`Learner.score_teacher`): distilling makes the student imitate
        the teacher on local inputs, so a teacher worse than the node makes the node
        worse, and a random teacher is refused before any training. Then it is
        trial-distilled into a copy of the learner and the copy is scored.

        :param learner: the node's learner (not changed).
        :param teacher: the teacher's forward function.
        :param kind: distillation kind; default ``learner.output_kind``.
        :param steps: trial steps; default :attr:`trial_steps`.
        :param local_score: the node's current score, if already known.
        :param temperature: distillation temperature.
        :return: the decision and the trained copy (``None`` when refused before the
            trial); install the copy's state when accepted: the work is already done.
        """
        local = learner.score() if local_score is None else local_score
        own = learner.score_teacher(teacher)
        if own is not None:
            first = self._decide(local, own, "teacher")
            if not first.accepted:
                return first, None
        trial = learner.clone()
        trial.distil_from(
            teacher, self.trial_steps if steps is None else steps, kind or learner.output_kind, temperature=temperature
        )
        return self._decide(local, trial.score(), "distilled teacher"), trial


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class IncomingModel:
    """A model (or part of one) that reached the node.

    :param family: its family name.
    :param state: its state (any width of the family; tensors may be missing).
    :param weight: its merge weight, e.g. the sender's sample count.
    :param ratio: its width ratio (to build it when it teaches another family).
    :param masks: ``{name: bool tensor}`` of the elements that arrived, per tensor;
        ``None`` or a missing entry means complete.
    :param teacher: forward function to distil from, for models that are not built
        from ``families`` (e.g. a policy from another library).
    :param origin: who sent it, for the record.
    """

    family: str
    state: Mapping[str, Tensor] = field(default_factory=dict)
    weight: float = 1.0
    ratio: float = 1.0
    masks: Mapping[str, Tensor] | None = None
    teacher: Callable[[Tensor], Outputs] | None = None
    origin: object = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one incoming model: ``action`` is ``"merged"``,
    ``"distilled"`` or ``"refused"``."""

    incoming: IncomingModel
    action: str
    decision: GateDecision


@dataclass(frozen=True)
class AbsorbResult:
    """What :func:`absorb_knowledge` did.

    :param outcomes: one per incoming model, in order.
    :param score_before: the node's score before.
    :param score_after: the node's score after.
    :param work: samples processed (trial and accepted distillation) for the clock.
    """

    outcomes: list[Outcome]
    score_before: float
    score_after: float
    work: int

    @property
    def accepted(self) -> int:
        """How many incoming models changed the node."""
        return sum(o.action != "refused" for o in self.outcomes)


def _is_partial(masks: Mapping[str, Tensor] | None) -> bool:
    return masks is not None and any(not bool(m.all()) for m in masks.values())


def _teacher_of(inc: IncomingModel, families: Mapping[str, ModelFamily] | None) -> Callable[[Tensor], Outputs] | str:
    """The incoming model's forward function, or why there is none."""
    if inc.teacher is not None:
        return inc.teacher
    if families is None or inc.family not in families:
        return f"unknown family {inc.family!r}: cannot build a teacher"
    if _is_partial(inc.masks):
        # Missing elements of another architecture have no local values to fall back on.
        return "partial model of another family cannot teach"
    try:
        model = families[inc.family].build(inc.ratio)
        model.load_state_dict(dict(inc.state), strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        return f"state does not fit {inc.family!r} at ratio {inc.ratio}: {exc}"
    model.eval()

    def forward(x: Tensor) -> Outputs:
        with torch.no_grad():
            return model(x)

    return forward


def _shape_mismatch(local: Mapping[str, Tensor], inc: IncomingModel) -> str | None:
    for key, value in inc.state.items():
        if key not in local:
            return f"tensor {key!r} is not in the local model"
        if value.dim() != local[key].dim():
            return f"tensor {key!r} has {value.dim()} dims, local {local[key].dim()}"
    return None


def absorb_knowledge(
    learner: Learner,
    incoming: IncomingModel | Sequence[IncomingModel],
    *,
    gate: Gate | None = None,
    families: Mapping[str, ModelFamily] | None = None,
    distil_steps: int | None = None,
    local_weight: float | None = None,
    temperature: float = 2.0,
    local_score: float | None = None,
) -> AbsorbResult:
    """Gate, then merge or distil, the models that reached a node.

    Same family (``incoming.family == learner.family``): each model is gated on the merge
    it would make with the local model alone; the accepted ones are then merged together
    in one overlap-weighted average (widths and partial masks respected). Another family:
    each model is built from ``families`` (or its ``teacher`` function used), scored
    itself on the node's validation data, trial-distilled into a copy of the learner on
    the node's own inputs, gated on the copy's score, and the copy's state installed
    when accepted (see :meth:`Gate.check_teacher`).

    :param learner: the node's learner (changed in place).
    :param incoming: one model or several.
    :param gate: the gate; default ``Gate()``.
    :param families: family name -> :class:`ModelFamily`, to build teachers of other
        families from their states.
    :param distil_steps: distillation steps for another family; default the gate's
        ``trial_steps``.
    :param local_weight: weight of the local model in a merge; default
        ``learner.num_samples``.
    :param temperature: distillation temperature.
    :param local_score: the node's current score, if already known. Scores are taken
        on fixed validation data (or fixed seeded episodes), so a state scores the same
        every time: the score of what is installed is the gate's, not measured again
        (for an RL node a score is tens of episodes).
    """
    gate = Gate() if gate is None else gate
    models = [incoming] if isinstance(incoming, IncomingModel) else list(incoming)
    local_weight = float(learner.num_samples) if local_weight is None else local_weight
    before = learner.score() if local_score is None else local_score
    outcomes: list[Outcome | None] = [None] * len(models)
    work = 0

    local_state = learner.get_state()
    same = [i for i, m in enumerate(models) if m.family == learner.family]
    accepted: list[int] = []
    candidates: dict[int, dict[str, Tensor]] = {}
    for i in same:
        inc = models[i]
        problem = _shape_mismatch(local_state, inc)
        if problem is None and not inc.state:
            problem = "empty state"
        if problem is not None:
            outcomes[i] = Outcome(inc, "refused", GateDecision(False, problem, before, math.nan))
            continue
        candidate = merge_same_family(local_state, [(inc.state, inc.weight)], [inc.masks], local_weight=local_weight)
        decision = gate.check(learner, candidate, local_score=before)
        outcomes[i] = Outcome(inc, "merged" if decision.accepted else "refused", decision)
        if decision.accepted:
            accepted.append(i)
            candidates[i] = candidate
    if accepted:
        # one model: its gated candidate is the merge (no second average of the same inputs)
        merged = candidates[accepted[0]] if len(accepted) == 1 else merge_same_family(
            local_state,
            [(models[i].state, models[i].weight) for i in accepted],
            [models[i].masks for i in accepted],
            local_weight=local_weight,
        )
        installed_score = outcomes[accepted[0]].decision.candidate_score  # type: ignore[union-attr]
        if len(accepted) > 1:
            # Each passed alone; their joint average is checked too, and when it fails
            # only the best single one is installed.
            joint = gate.check(learner, merged, local_score=before)
            installed_score = joint.candidate_score
            if not joint.accepted:
                best = max(accepted, key=lambda i: outcomes[i].decision.candidate_score)  # type: ignore[union-attr]
                for i in accepted:
                    if i != best:
                        outcomes[i] = Outcome(models[i], "refused", GateDecision(False, "joint merge " + joint.reason, before, joint.candidate_score))
                merged = merge_same_family(
                    local_state, [(models[best].state, models[best].weight)], [models[best].masks], local_weight=local_weight
                )
                installed_score = outcomes[best].decision.candidate_score  # type: ignore[union-attr]
        learner.set_state(merged)

    current = installed_score if accepted else before
    for i, inc in enumerate(models):
        if outcomes[i] is not None:
            continue
        teacher = _teacher_of(inc, families)
        if isinstance(teacher, str):
            outcomes[i] = Outcome(inc, "refused", GateDecision(False, teacher, current, math.nan))
            continue
        start = learner.work_done
        decision, trial = gate.check_teacher(
            learner, teacher, steps=distil_steps, local_score=current, temperature=temperature
        )
        if trial is not None:
            # The trial ran on this node's compute whether or not it is kept: charge it.
            learner.work_done += trial.work_done - start
            work += trial.work_done - start
        outcomes[i] = Outcome(inc, "distilled" if decision.accepted else "refused", decision)
        if decision.accepted and trial is not None:
            learner.set_state(trial.get_state())
            current = decision.candidate_score
    return AbsorbResult([o for o in outcomes if o is not None], before, current, work)

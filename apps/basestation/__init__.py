"""LM4Net: base-station agents that coordinate by sharing models (issue 6).

- :mod:`.config`: app scenarios (radio preset + training, X2 links, sharing), validated.
- :mod:`.learner`: per-station SB3 PPO agents in one shared radio network (`StationLearner`).
- :mod:`.training`: the stations as an MFD `World` over the X2 graph; the central PPO.
- :mod:`.rules`: the tuned MLB rule and the central search over per-station rule parameters.
- :mod:`.evaluation`: every controller on every scenario and seed; the HTML/PNG/JSON/CSV report.
- :mod:`.cli`: ``mfd basestation list | train | evaluate``.
"""

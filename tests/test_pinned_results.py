"""The shipped digits scenario on the simulator gives the results it gave before the
runtime was reorganised around a handed-in network (issue 12), with each node and each
link direction drawing from its own random stream. A change that alters them
on purpose updates these figures and says why in its commit."""
from __future__ import annotations

import pytest

from mfd_core import load_scenario, run
from mfd_core.runtime.supervised import topology_of

from tests.helpers import SCENARIOS

PINNED = {  # policy: (final mean accuracy, bytes on the air, packets on the air)
    "mfd": (0.527437324821949, 2222576, 2129),
    "fedavg": (0.28426182791590693, 4160082, 3198),
}


@pytest.mark.parametrize("policy", sorted(PINNED))
def test_shipped_digits_gives_the_pinned_results(policy) -> None:
    scenario = load_scenario(SCENARIOS / "digits.toml").replace(duration=6.0)
    assert topology_of(scenario, 0).number_of_nodes() == 20
    result = run(scenario, seed=0, policy=policy)
    accuracy, air_bytes, packets = PINNED[policy]
    assert (result.bytes[-1], result.packets[-1]) == (air_bytes, packets)
    assert result.final_mean_score == pytest.approx(accuracy, abs=1e-9)

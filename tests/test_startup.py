"""Start-up: what a small run imports before its first step (issue 13).

A fresh interpreter is the only honest place to look: in the test process torch's
compiler stack and scikit-learn may already have been imported by other tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A digits learner built and trained as a run builds and trains it, then what got imported.
PROBE = """
import json, sys
import mfd_core
light = sorted(m for m in ("torch", "numpy", "simpy", "networkx", "pydantic") if m in sys.modules)
from mfd_core.datasets import load_digits
from mfd_core.learners.torch_supervised import TorchSupervisedLearner
from mfd_core.scaling import MLPFamily
data = load_digits()
learner = TorchSupervisedLearner(MLPFamily(64, (32,), 10).build(1.0, seed=0), (data.inputs[:100], data.labels[:100]),
                                 (data.inputs[100:150], data.labels[100:150]), optimizer="adamw")
learner.train(3)
learner.distil_from(learner.outputs, 2, "classification")
learner.clone().train(1)
print(json.dumps({"light": light, "dynamo": "torch._dynamo" in sys.modules,
                  "sklearn": any(m.split(".")[0] == "sklearn" for m in sys.modules)}))
"""


def test_a_run_imports_neither_torchs_compiler_stack_nor_scikit_learn() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout
    seen = json.loads(out.splitlines()[-1])
    assert seen["light"] == []  # `import mfd_core` resolves names on first use
    # torch.optim.Optimizer's construction imports torch._dynamo (1.1 s of CPU); the
    # learner's FusedAdam does not. scikit-learn's import costs 0.9 s; its digits file does not.
    assert seen["dynamo"] is False and seen["sklearn"] is False

"""Heterogeneous fleets under MFD: capacity tiers, two architectures, int8 transport (issue 4).

Four comparisons, each over the same seeds, topology and data split, with
``build_world(...).run()``; node ``i`` takes ``widths[i % 3]`` / ``kinds[i % 2]``:

1. **mixed widths** (``apps/scenarios/digits_tiers.toml``: MLP widths 0.25 / 0.5 / 1.0)
   against the same scenario with every node at full width (``widths`` emptied: the
   shipped ``digits.toml``): mean final accuracy (target >= 97% of the full-width
   fleet's) and bytes on the air (target <= 40% of its bytes). Nodes train the fleet's
   narrower widths nested in their models too (ordered dropout, ``learner.ordered_dropout``),
   and a merge counts a narrower model as the wider one with its missing units off
   (``silent_units`` of ``mfd_core.scaling.merge_overlapping``), and a narrow (sub-)model
   trains its layers after the first at ``lr * r**-1.5`` (``learner.width_lr_exponent``):
   a slice of a wide initialisation learns slower at the wide step size. The full-width
   fleet has no narrower widths, so none of these changes it. For reference (no target), the same fleet
   with every node at 0.25 or at 0.5 width: what the tiers' capacities give without mixing;
2. **the 0.25-width nodes**: their final accuracy in the mixed-width fleet under MFD
   against the same nodes learning alone (``isolated``): target >= +10 points;
3. **cross-architecture** (``digits_mixed_arch.toml``: MLP and small CNN on the 8x8
   images): the CNN nodes (taught by MLP neighbours by distillation, and by CNN
   neighbours by merging) and the MLP nodes, each against its isolated self: target
   >= +5 points; zero data bytes on the air (asserted);
4. **int8 vs fp32** transport on the full-width fleet: accuracy lost (target <= 1 point)
   and the bytes ratio (about a quarter).

Accuracy is the test accuracy of what each node serves (its own model, or under MFD its
blend with its neighbours' latest gate-approved models) at the end of the run; a
figure is the mean over seeds of the per-seed figure. Results go to
``benchmarks/results/heterogeneous.json`` and a table is printed.

    python benchmarks/heterogeneous.py                    # 3 seeds, 60 simulated s
    python benchmarks/heterogeneous.py --jobs 2           # two runs at a time
    python benchmarks/heterogeneous.py --seeds 0 --duration 30
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, write_results  # noqa: E402
from mfd_core.runtime import build_world  # noqa: E402
from mfd_core.scenario import Scenario, load  # noqa: E402

SCENARIOS = ROOT / "apps" / "scenarios"
TARGETS = {
    "mixed_width_acc_over_full": 0.97,  # at least
    "mixed_width_bytes_over_full": 0.40,  # at most
    "narrowest_gain_points": 10.0,  # at least
    "cross_arch_gain_points": 5.0,  # at least, for each architecture
    "int8_points_lost": 1.0,  # at most
    "int8_bytes_over_fp32": 0.25,  # "about a quarter": reported, not a pass/fail bound
}


def variants(duration: float | None) -> dict[str, tuple[Scenario, str]]:
    """The runs, by name: (scenario, what it is)."""
    tiers = load(SCENARIOS / "digits_tiers.toml")
    arch = load(SCENARIOS / "digits_mixed_arch.toml")
    if duration is not None:
        tiers, arch = tiers.replace(duration=duration), arch.replace(duration=duration)
    full = tiers.replace(name="digits_full_width", learner={"widths": ()})
    return {
        "full": (full, "all nodes full width, MFD int8 (digits.toml)"),
        "full_fp32": (full.replace(policy={"precision": "fp32"}), "all nodes full width, MFD fp32"),
        "tiers": (tiers, "widths 0.25/0.5/1.0, MFD int8"),
        "tiers_isolated": (tiers.with_policy("isolated"), "widths 0.25/0.5/1.0, isolated"),
        "all_quarter": (tiers.replace(name="digits_all_quarter", learner={"widths": (0.25,)}),
                        "all nodes width 0.25, MFD int8 (reference)"),
        "all_half": (tiers.replace(name="digits_all_half", learner={"widths": (0.5,)}),
                     "all nodes width 0.5, MFD int8 (reference)"),
        "arch": (arch, "MLP + CNN, MFD int8"),
        "arch_isolated": (arch.with_policy("isolated"), "MLP + CNN, isolated"),
    }


def one_run(name: str, scenario: Scenario, seed: int) -> dict[str, Any]:
    """Run one world; what the figures need from it (picklable, for the process pool)."""
    world = build_world(scenario, seed)
    result = world.run()
    final = result.scores[-1]
    groups: dict[str, list[float]] = {}
    for node_id, score in zip(result.node_ids, final):
        learner = world.nodes[node_id].learner
        groups.setdefault(f"{learner.family}@{learner.width:g}", []).append(score)
    return {
        "name": name, "seed": seed,
        "mean_acc": result.final_mean_score,
        "groups": {k: float(np.nanmean(v)) for k, v in sorted(groups.items())},
        "bytes": result.bytes[-1], "model_bytes": result.model_bytes[-1], "data_bytes": result.data_bytes[-1],
        "packets": result.packets[-1], "wall_s": result.wall_seconds,
        "counters": {k: result.extra.get(k, 0) for k in ("shares", "accepted", "refused", "partial_merged", "distilled")},
    }


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def figures_from(runs: dict[tuple[str, int], dict], seeds: list[int]) -> dict[str, Any]:
    def get(name, seed):
        return runs[(name, seed)]

    per_seed = []
    for s in seeds:
        full, fp32, tiers, tiers_iso = get("full", s), get("full_fp32", s), get("tiers", s), get("tiers_isolated", s)
        arch, arch_iso = get("arch", s), get("arch_isolated", s)
        for r in (full, fp32, tiers, arch):
            # no sample may leave its node: the run must not have put a single data byte on the air
            assert r["data_bytes"] == 0, f"{r['name']} seed {s}: {r['data_bytes']} data bytes sent"
        per_seed.append({
            "seed": s,
            "full_acc": full["mean_acc"], "tiers_acc": tiers["mean_acc"],
            "mixed_width_acc_over_full": tiers["mean_acc"] / full["mean_acc"],
            "full_MB": full["bytes"] / 1e6, "tiers_MB": tiers["bytes"] / 1e6,
            "mixed_width_bytes_over_full": tiers["bytes"] / full["bytes"],
            "all_quarter_acc_over_full": get("all_quarter", s)["mean_acc"] / full["mean_acc"],
            "all_quarter_bytes_over_full": get("all_quarter", s)["bytes"] / full["bytes"],
            "all_half_acc_over_full": get("all_half", s)["mean_acc"] / full["mean_acc"],
            "all_half_bytes_over_full": get("all_half", s)["bytes"] / full["bytes"],
            "tiers_by_width": tiers["groups"], "tiers_isolated_by_width": tiers_iso["groups"],
            "narrowest_mfd_acc": tiers["groups"]["mlp@0.25"], "narrowest_isolated_acc": tiers_iso["groups"]["mlp@0.25"],
            "narrowest_gain_points": 100 * (tiers["groups"]["mlp@0.25"] - tiers_iso["groups"]["mlp@0.25"]),
            "cnn_mfd_acc": arch["groups"]["cnn@1"], "cnn_isolated_acc": arch_iso["groups"]["cnn@1"],
            "cnn_gain_points": 100 * (arch["groups"]["cnn@1"] - arch_iso["groups"]["cnn@1"]),
            "mlp_mfd_acc": arch["groups"]["mlp@1"], "mlp_isolated_acc": arch_iso["groups"]["mlp@1"],
            "mlp_gain_points": 100 * (arch["groups"]["mlp@1"] - arch_iso["groups"]["mlp@1"]),
            "arch_distilled": arch["counters"]["distilled"], "arch_data_bytes": arch["data_bytes"],
            "arch_MB": arch["bytes"] / 1e6,
            "fp32_acc": fp32["mean_acc"], "int8_acc": full["mean_acc"],
            "int8_points_lost": 100 * (fp32["mean_acc"] - full["mean_acc"]),
            "fp32_MB": fp32["bytes"] / 1e6,
            "int8_bytes_over_fp32": full["bytes"] / fp32["bytes"],
            "int8_model_bytes_over_fp32": full["model_bytes"] / fp32["model_bytes"],
        })
    keys = [k for k, v in per_seed[0].items() if k != "seed" and isinstance(v, (int, float))]
    mean = {k: _mean([row[k] for row in per_seed]) for k in keys}
    met = {
        "mixed_width_acc_over_full": mean["mixed_width_acc_over_full"] >= TARGETS["mixed_width_acc_over_full"],
        "mixed_width_bytes_over_full": mean["mixed_width_bytes_over_full"] <= TARGETS["mixed_width_bytes_over_full"],
        "narrowest_gain_points": mean["narrowest_gain_points"] >= TARGETS["narrowest_gain_points"],
        "cnn_gain_points": mean["cnn_gain_points"] >= TARGETS["cross_arch_gain_points"],
        "mlp_gain_points": mean["mlp_gain_points"] >= TARGETS["cross_arch_gain_points"],
        "arch_data_bytes_zero": all(row["arch_data_bytes"] == 0 for row in per_seed),
        "int8_points_lost": mean["int8_points_lost"] <= TARGETS["int8_points_lost"],
    }
    return {"per_seed": per_seed, "mean": mean, "met": met,
            "runs": [runs[k] for k in sorted(runs, key=lambda k: (k[0], k[1]))]}


def table(fig: dict[str, Any], seeds: list[int]) -> str:
    m, met, rows = fig["mean"], fig["met"], fig["per_seed"]

    def seeds_of(key, fmt):
        return " ".join(fmt.format(row[key]) for row in rows)

    def mark(key):
        return "yes" if met[key] else "NO"

    lines = [
        ("figure", "mean", f"seeds {' '.join(map(str, seeds))}", "target", "met"),
        ("mixed-width acc / full-width acc", f"{m['mixed_width_acc_over_full']:.3f}",
         seeds_of("mixed_width_acc_over_full", "{:.3f}"), ">= 0.97", mark("mixed_width_acc_over_full")),
        ("  (accuracies: mixed / full)", f"{m['tiers_acc']:.3f} / {m['full_acc']:.3f}", "", "", ""),
        ("mixed-width bytes / full-width bytes", f"{m['mixed_width_bytes_over_full']:.3f}",
         seeds_of("mixed_width_bytes_over_full", "{:.3f}"), "<= 0.40", mark("mixed_width_bytes_over_full")),
        ("  (MB: mixed / full)", f"{m['tiers_MB']:.2f} / {m['full_MB']:.2f}", "", "", ""),
        ("  reference, all width 0.25: acc / bytes over full",
         f"{m['all_quarter_acc_over_full']:.3f} / {m['all_quarter_bytes_over_full']:.3f}",
         seeds_of("all_quarter_acc_over_full", "{:.3f}"), "", ""),
        ("  reference, all width 0.5: acc / bytes over full",
         f"{m['all_half_acc_over_full']:.3f} / {m['all_half_bytes_over_full']:.3f}",
         seeds_of("all_half_acc_over_full", "{:.3f}"), "", ""),
        ("0.25-width nodes: MFD - isolated (points)", f"{m['narrowest_gain_points']:+.1f}",
         seeds_of("narrowest_gain_points", "{:+.1f}"), ">= +10", mark("narrowest_gain_points")),
        ("  (acc: MFD / isolated)", f"{m['narrowest_mfd_acc']:.3f} / {m['narrowest_isolated_acc']:.3f}", "", "", ""),
        ("CNN nodes in MLP+CNN fleet - isolated (points)", f"{m['cnn_gain_points']:+.1f}",
         seeds_of("cnn_gain_points", "{:+.1f}"), ">= +5", mark("cnn_gain_points")),
        ("  (acc: MFD / isolated)", f"{m['cnn_mfd_acc']:.3f} / {m['cnn_isolated_acc']:.3f}", "", "", ""),
        ("MLP nodes in MLP+CNN fleet - isolated (points)", f"{m['mlp_gain_points']:+.1f}",
         seeds_of("mlp_gain_points", "{:+.1f}"), ">= +5", mark("mlp_gain_points")),
        ("  (acc: MFD / isolated)", f"{m['mlp_mfd_acc']:.3f} / {m['mlp_isolated_acc']:.3f}", "", "", ""),
        ("  distillations accepted / data bytes", f"{m['arch_distilled']:.0f} / {m['arch_data_bytes']:.0f}",
         seeds_of("arch_distilled", "{:.0f}"), "data = 0", mark("arch_data_bytes_zero")),
        ("int8 vs fp32: points lost", f"{m['int8_points_lost']:+.2f}",
         seeds_of("int8_points_lost", "{:+.2f}"), "<= 1", mark("int8_points_lost")),
        ("  (acc: int8 / fp32)", f"{m['int8_acc']:.3f} / {m['fp32_acc']:.3f}", "", "", ""),
        ("int8 bytes / fp32 bytes (all / model only)",
         f"{m['int8_bytes_over_fp32']:.3f} / {m['int8_model_bytes_over_fp32']:.3f}",
         seeds_of("int8_bytes_over_fp32", "{:.3f}"), "~0.25", ""),
    ]
    widths = [max(len(str(row[i])) for row in lines) for i in range(5)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines)


def _git_state() -> dict[str, Any]:
    """The commit measured, and the files under mfd_core/ and apps/scenarios/ that differed from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "uncommitted": git("status", "--porcelain", "--", "mfd_core", "apps/scenarios").splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--duration", type=float, default=None,
                        help="simulated seconds per run (default: the scenario files' 60)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, in separate processes (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "heterogeneous.json",
                        help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    plan = variants(args.duration)
    code = _git_state()  # before the runs: the code they ran
    tasks = [(name, seed) for seed in args.seeds for name in plan]
    runs: dict[tuple[str, int], dict] = {}
    started = time.perf_counter()

    def done(result: dict) -> None:
        runs[(result["name"], result["seed"])] = result
        groups = ", ".join(f"{k} {v:.3f}" for k, v in result["groups"].items())
        print(f"[{len(runs):2d}/{len(tasks)}] {result['name']:<15} seed {result['seed']}: mean {result['mean_acc']:.3f} "
              f"({groups}), {result['bytes'] / 1e6:.2f} MB, distilled {result['counters']['distilled']}, "
              f"{result['wall_s']:.0f} s wall ({time.perf_counter() - started:.0f} s so far)",
              file=sys.stderr, flush=True)

    print(f"{len(tasks)} runs ({len(plan)} variants x {len(args.seeds)} seeds), {args.jobs} at a time",
          file=sys.stderr, flush=True)
    if args.jobs == 1:
        for name, seed in tasks:
            done(one_run(name, plan[name][0], seed))
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(one_run, name, plan[name][0], seed) for name, seed in tasks]
            for future in as_completed(futures):
                done(future.result())

    fig = figures_from(runs, args.seeds)
    print(table(fig, args.seeds))
    duration = args.duration if args.duration is not None else plan["tiers"][0].duration
    path = write_results(
        "heterogeneous", fig, path=args.out, targets=TARGETS, seeds=args.seeds, simulated_seconds=duration,
        variants={name: what for name, (_, what) in plan.items()}, code=code,
        command="python " + " ".join([str(Path(sys.argv[0]))] + (sys.argv[1:] if argv is None else argv)),
        total_wall_s=round(time.perf_counter() - started, 1))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

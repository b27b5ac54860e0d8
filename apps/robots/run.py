"""Run fleets into a run folder, and keep what they produced: measurements, policies,
frames of the robots acting.

A robots run folder is the core's (:mod:`mfd_core.runfolder`, kind ``"robots"``):
``results.csv`` holds every measurement as it comes, one tidy row each: per robot its
success rate (``score``), its own env steps (``env_steps``) and the bytes it sent
(``bytes_sent``); per run the traffic counters. ``runs.json`` keeps each run's record
(``extra["robots"]``: each robot's arm, join time, counters), and
``<policy>/seed<k>/policies/robot<k>_<arm>.zip`` the trained policies (SB3 zips,
replayable with ``mfd robots play``); ``checkpoints/<policy>/seed<k>/`` each robot's
served policy as MFD model files, every 30 s of wall time and at the end
(:meth:`~mfd_core.runfolder.RunFolder.checkpoint`; the reference fleet beside the run
saves its policies at its end only).

Two things run beside the training, each in a second OS process (``python -m
apps.robots.run``, plain JSON lines on its stdin and stdout, no pickles):

- the **measurements** (``measure="apart"``): at each measurement the fleet hands a copy
  of each robot's actor to the worker and goes on training; the worker runs the held-out
  episodes and the scores are filled in as they come back. Measuring changes nothing in
  training (deterministic actors, episodes on their own envs), so the figures are the
  ones measured in place (``measure="inline"``), bit for bit, off the critical path.
- a **reference** fleet (isolated learning beside MFD in ``mfd robots demo``), whose rows
  stream back as they are measured.
"""
from __future__ import annotations

import base64
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from mfd_core.metrics import RunResult

from .config import RobotsScenario, from_dict

FRAME_SIZE = (240, 180)  # px per robot in strips and GIFs: four robots side by side fit a page
MEASURES = ("apart", "inline")
# After the training ends, how long to wait for the measurements still out (each is a few
# dozen episodes); and after an interruption, how long to wait for those already sent.
DRAIN_TIMEOUT_S = 600.0
INTERRUPT_DRAIN_S = 5.0
# The worker processes run this much nicer than the command: with the training, the
# measurements and a reference fleet on 2 cores, the scheduler gives the training a core
# of its own (CFS weights 1024 against 335 + 110) and the others share the second, the
# measurements first: a run lasts until its last measurement is in, and measurements that
# lag the training stretch it (the demo's MFD run: 55-61 s with both at 5).
WORKER_NICENESS = 5
REFERENCE_NICENESS = 10


# --------------------------------------------------------------------------- records


def instrument(fleet) -> None:
    """Record each robot's own env steps and the bytes it sent beside its score."""
    measures = fleet.world.measures
    measures.setdefault("env_steps", lambda node: node.learner.env_steps)
    measures.setdefault("bytes_sent", lambda node: node.bytes_sent)


def robots_extra(fleet, result: RunResult) -> None:
    """What a run's record says about its robots (kept in ``runs.json``)."""
    s = fleet.scenario
    robots = []
    for node_id in result.node_ids:
        node = fleet.world.nodes[node_id]
        robots.append({"node": node_id, "arm": s.robots[node_id].arm, "join_time": fleet.join_times.get(node_id),
                       "env_steps": int(node.learner.env_steps),
                       "score_env_steps": int(node.learner.score_env_steps),
                       "bytes_sent": int(node.bytes_sent), "counters": vars(node.counters)})
    result.extra.update(robots=robots, target=s.target, task=s.task)


def robot_record(fleet, result: RunResult) -> dict[str, Any]:
    """One run's robots as plain data (each robot's arm, cell, env steps at every
    measurement, steps to the target, bytes it sent): what the benchmarks keep."""
    from .fleet import steps_to

    s = fleet.scenario
    scores = np.asarray(result.scores, dtype=float)
    robots = []
    for k, node_id in enumerate(result.node_ids):
        node = fleet.world.nodes[node_id]
        steps = [row[k] for row in fleet.env_steps]
        series = [None if math.isnan(v) else float(v) for v in scores[:, k]]
        robots.append({
            "node": node_id, "arm": s.robots[node_id].arm, "cell": s.robots[node_id].model_dump(),
            "join_time": fleet.join_times.get(node_id),
            "steps_to_target": steps_to(series, steps, s.target),
            "final_success": series[-1], "env_steps": int(node.learner.env_steps),
            "score_env_steps": int(node.learner.score_env_steps),
            "bytes_sent": int(node.bytes_sent), "counters": vars(node.counters),
        })
    return {"target": s.target, "task": s.task, "policy": s.policy.name, "seed": fleet.seed,
            "times": list(result.times), "env_steps": fleet.env_steps, "robots": robots}


def steps_to_target(result: RunResult, target: float) -> list[int | None]:
    """Per robot: its own env steps at its first measurement at ``target`` success or more."""
    steps = result.node_metrics.get("env_steps", [])
    out: list[int | None] = []
    for k in range(len(result.node_ids)):
        reached = None
        for i, row in enumerate(result.scores):
            v = row[k]
            if not math.isnan(v) and v >= target - 1e-12 and i < len(steps) and not math.isnan(steps[i][k]):
                reached = int(steps[i][k])
                break
        out.append(reached)
    return out


def save_policies(fleet, folder: Path) -> list[Path]:
    paths = []
    for node_id, learner in fleet.learners.items():
        arm = fleet.scenario.robots[node_id].arm
        paths.append(learner.save(Path(folder) / f"robot{node_id}_{arm}.zip"))
    return paths


def copy_row(src: RunResult, dst: RunResult, i: int) -> None:
    """Append measurement ``i`` of ``src`` to ``dst``."""
    dst.times.append(src.times[i])
    dst.scores.append(list(src.scores[i]))
    for name in ("bytes", "model_bytes", "data_bytes", "packets"):
        getattr(dst, name).append(getattr(src, name)[i])
    for name, rows in src.node_metrics.items():
        dst.node_metrics.setdefault(name, []).append(list(rows[i]))


def row_doc(result: RunResult, i: int) -> dict[str, Any]:
    return {"t": result.times[i], "scores": [None if math.isnan(v) else v for v in result.scores[i]],
            "bytes": result.bytes[i], "model_bytes": result.model_bytes[i], "data_bytes": result.data_bytes[i],
            "packets": result.packets[i],
            "metrics": {name: [None if math.isnan(v) else v for v in rows[i]]
                        for name, rows in result.node_metrics.items()}}


def append_row(result: RunResult, doc: dict[str, Any]) -> None:
    def nan(values):
        return [math.nan if v is None else float(v) for v in values]

    result.times.append(float(doc["t"]))
    result.scores.append(nan(doc["scores"]))
    for name in ("bytes", "model_bytes", "data_bytes", "packets"):
        getattr(result, name).append(int(doc[name]))
    for name, values in doc["metrics"].items():
        result.node_metrics.setdefault(name, []).append(nan(values))


def encode_state(state) -> dict[str, list]:
    """Tensors as JSON: dtype, shape, base64 of the raw bytes."""
    doc = {}
    for name, tensor in state.items():
        array = tensor.detach().cpu().numpy()
        doc[name] = [str(array.dtype), list(array.shape), base64.b64encode(array.tobytes()).decode("ascii")]
    return doc


def decode_state(doc: dict[str, list]):
    import torch

    state = {}
    for name, (dtype, shape, data) in doc.items():
        if dtype not in ("float32", "float64", "float16"):
            raise ValueError(f"{name}: unexpected dtype {dtype}")
        array = np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape)
        state[name] = torch.from_numpy(array.copy())
    return state


# --------------------------------------------------------------------------- worker processes


class WorkerError(RuntimeError):
    """A worker process failed; the message is its one line."""


class Worker:
    """A second OS process (``python -m apps.robots.run``) that speaks JSON lines.

    A reader and a writer thread keep the pipes moving, so the training never waits on
    a full pipe; the worker runs in its own session (Ctrl-C reaches this process only,
    which decides what to keep) and exits when its stdin closes or this process dies.
    """

    def __init__(self, job: dict[str, Any]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"))
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "apps.robots.run"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                     env=env, start_new_session=True)
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()
        self.send(job)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                try:
                    self._out.put(json.loads(line))
                except json.JSONDecodeError:
                    continue
        self._out.put(None)  # the worker ended

    def _write(self) -> None:
        while True:
            line = self._in.get()
            if line is None:
                break
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                break
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def send(self, message: dict[str, Any]) -> None:
        self._in.put(json.dumps(message) + "\n")

    def messages(self, timeout: float = 0.0) -> Iterable[dict[str, Any] | None]:
        """What the worker said since the last call (``None``: it ended); waits up to
        ``timeout`` for the first message."""
        try:
            yield self._out.get(timeout=timeout) if timeout > 0 else self._out.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                yield self._out.get_nowait()
            except queue.Empty:
                return

    def close(self, *, kill: bool = False) -> None:
        self._in.put(None)
        if kill and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class RemoteScores:
    """The measurements of one fleet run, in a worker process (off the critical path)."""

    def __init__(self, scenario: RobotsScenario, seed: int, policy: str) -> None:
        self.worker = Worker({"job": "evaluate", "scenario": scenario.model_dump(), "seed": seed, "policy": policy})
        self.pending: set[tuple[int, int]] = set()
        self.result: RunResult | None = None

    def attach(self, fleet) -> None:
        world = fleet.world
        result = self.result = world.result
        import torch

        def evaluate(node_id: int, learner) -> float:
            if not world.network.is_up(node_id):
                return math.nan
            index = len(result.times)  # the measurement being recorded
            with torch.no_grad():
                actor = {k: v for k, v in learner.get_state().items() if k.startswith("actor.")}
            self.worker.send({"i": index, "node": node_id, "state": encode_state(actor)})
            self.pending.add((index, node_id))
            return math.nan

        world.evaluate = evaluate

    def collect(self, timeout: float = 0.0) -> None:
        """Fill in the scores that came back."""
        for message in self.worker.messages(timeout):
            if message is None or "error" in message:
                why = (message or {}).get("error", "it ended before its measurements were done")
                raise WorkerError(f"the measuring process failed: {why}")
            i, node = int(message["i"]), int(message["node"])
            k = self.result.node_ids.index(node)
            score = message["score"]
            self.result.scores[i][k] = math.nan if score is None else float(score)
            self.pending.discard((i, node))

    def complete(self) -> int:
        """How many measurements have all their scores."""
        n = len(self.result.times)
        return min([i for i, _ in self.pending if i < n], default=n)

    def drain(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.pending and time.monotonic() < end:
            self.collect(timeout=min(1.0, max(0.01, end - time.monotonic())))

    def close(self, *, kill: bool = False) -> None:
        self.worker.send({"end": True})
        self.worker.close(kill=kill)


class RemoteFleet:
    """A whole fleet run in a worker process (the demo's isolated reference); its rows
    come back as they are measured."""

    def __init__(self, scenario: RobotsScenario, seed: int, policy: str, policies_dir: Path) -> None:
        self.worker = Worker({"job": "fleet", "scenario": scenario.model_dump(), "seed": seed, "policy": policy,
                              "policies": str(policies_dir)})
        self.result = RunResult(scenario.name, policy, seed, list(range(len(scenario.robots))))
        self.done = False

    def collect(self, timeout: float = 0.0) -> int:
        """Rows that came back (appended to :attr:`result`); how many."""
        rows = 0
        for message in self.worker.messages(timeout):
            if message is None or "error" in message:
                if self.done:
                    return rows
                why = (message or {}).get("error", "it ended before its run was done")
                raise WorkerError(f"the {self.result.policy} reference failed: {why}")
            if "row" in message:
                append_row(self.result, message["row"])
                rows += 1
            elif "done" in message:
                final = RunResult.from_dict(message["done"])
                while len(self.result.times) < len(final.times):
                    copy_row(final, self.result, len(self.result.times))
                self.result.events, self.result.extra = final.events, final.extra
                self.result.wall_seconds = final.wall_seconds
                self.done = True
                return rows
        return rows

    def close(self, *, kill: bool = False) -> None:
        self.worker.close(kill=kill)


# --------------------------------------------------------------------------- running into a folder


class FleetRunner:
    """Runs a scenario's fleets into a :class:`~mfd_core.runfolder.RunFolder`.

    :param measure: ``"apart"``: measurements in a worker process; ``"inline"``: here.
    :param progress: an :class:`apps.common.Progress` over every run's simulated seconds.
    """

    def __init__(self, scenario: RobotsScenario, folder, progress, *, measure: str = "apart") -> None:
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        self.scenario, self.folder, self.progress, self.measure = scenario, folder, progress, measure

    def run(self, policy: str, seed: int, *, reference: str | None = None, keep_fleet: bool = False):
        """One fleet under ``policy`` (and the ``reference`` fleet of the same seed beside
        it, in a second process). :return: the fleet if ``keep_fleet`` (envs open), else None.
        :raises Interrupted: after what was measured is written.
        """
        from .fleet import build_fleet, run_fleet

        s = self.scenario
        ref = None
        if reference is not None:
            ref = RemoteFleet(s, seed, reference, self.folder.path / reference / f"seed{seed}" / "policies")
        scores = RemoteScores(s, seed, policy) if self.measure == "apart" else None
        fleet = None
        published = RunResult(s.name, policy, seed, list(range(len(s.robots))))
        done = {"main": 0.0, "ref": 0.0}
        label = f"{policy} seed {seed}" + (f" (+ {reference} beside it)" if ref else "")
        try:
            # measured apart, the worker here takes every measurement: the fleet's own
            # measuring processes (eval_workers) would only race it for the same rows
            fleet = build_fleet(s.replace(eval_workers=0) if scores is not None else s, seed, policy)
            instrument(fleet)
            if scores is not None:
                scores.attach(fleet)
            result = fleet.world.result

            def publish() -> None:
                if scores is not None:
                    scores.collect()
                upto = scores.complete() if scores is not None else len(result.times)
                while len(published.times) < upto:
                    copy_row(result, published, len(published.times))
                self.folder.stream(published)

            def follow_reference() -> None:
                if ref is not None and ref.collect():
                    self.folder.stream(ref.result)
                    self._advance("ref", ref.result.times[-1], done)

            def on_measure(t: float, fl) -> None:
                publish()
                follow_reference()
                self.progress.describe(f"{label} | success " + _successes(published, fl.scenario))
                self._advance("main", t, done)
                self.folder.checkpoint(policy, seed, t, fl.world.served_states)

            cpu, wall = time.process_time(), time.perf_counter()
            run = run_fleet(fleet, on_measure)
            run.extra["process_cpu_seconds"] = round(time.process_time() - cpu, 3)  # this process's, training
            if scores is not None:
                scores.drain(DRAIN_TIMEOUT_S)
                if scores.pending:
                    raise WorkerError(f"{len(scores.pending)} measurement(s) did not come back in "
                                      f"{DRAIN_TIMEOUT_S:.0f} s")
            publish()
            robots_extra(fleet, run)
            # the run's wall time counts until its last measurement is in, wherever it was taken
            run.extra["training_wall_seconds"] = round(run.wall_seconds, 3)
            published.events, published.extra = run.events, run.extra
            published.wall_seconds = time.perf_counter() - wall
            save_policies(fleet, self.folder.path / policy / f"seed{seed}" / "policies")
            self.folder.checkpoint(policy, seed, s.duration, fleet.world.served_states, final=True)
            self._advance("main", s.duration, done)
            self.folder.finish_run(published)
            if ref is not None:
                while not ref.done:
                    if ref.collect(timeout=1.0):
                        self.folder.stream(ref.result)
                        self._advance("ref", ref.result.times[-1], done)
                self.folder.stream(ref.result)
                self._advance("ref", s.duration, done)
                self.folder.finish_run(ref.result)
        except BaseException:
            self._keep_what_was_measured(scores, published, fleet, ref)
            raise
        finally:
            if scores is not None:
                scores.close(kill=True)
            if ref is not None:
                ref.close(kill=not ref.done)
            if fleet is not None and not keep_fleet:
                fleet.close()
        return fleet if keep_fleet else None

    def _advance(self, which: str, t: float, done: dict[str, float]) -> None:
        self.progress.advance(t - done[which])
        done[which] = t

    def _keep_what_was_measured(self, scores, published, fleet, ref) -> None:
        """Interrupted (or failed): the measurements already taken go to the folder."""
        try:
            if scores is not None and scores.result is not None and fleet is not None:
                scores.drain(INTERRUPT_DRAIN_S)
                while len(published.times) < scores.complete():
                    copy_row(scores.result, published, len(published.times))
            elif fleet is not None:
                while len(published.times) < len(fleet.world.result.times):
                    copy_row(fleet.world.result, published, len(published.times))
            if fleet is not None:
                published.events = fleet.world.result.events
            if published.times:
                self.folder.finish_run(published, interrupted=True)
            if ref is not None:
                ref.collect()
                if ref.result.times:
                    self.folder.finish_run(ref.result, interrupted=not ref.done)
        except Exception:  # noqa: BLE001 - keeping what we can must not hide why the run stopped
            pass


def _successes(result: RunResult, scenario: RobotsScenario) -> str:
    if not result.scores:
        return "--"
    cells = []
    for k, node_id in enumerate(result.node_ids):
        v = result.scores[-1][k]
        cells.append(f"{scenario.robots[node_id].arm}#{node_id} {'--' if math.isnan(v) else f'{v:.0%}'}")
    return " ".join(cells)


def load_scenario(folder: Path) -> RobotsScenario:
    """The scenario a results folder was made with (``scenario.json`` at its top)."""
    path = Path(folder) / "scenario.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no scenario.json (not a robots results folder)")
    return from_dict(json.loads(path.read_text()))


# --------------------------------------------------------------------------- the worker's side


def _serve_evaluations(job: dict[str, Any], send: Callable[[dict], None]) -> None:
    """Score actors sent on stdin with the fleet's own held-out measurement."""
    from .fleet import build_fleet

    scenario = from_dict(job["scenario"])
    # models to act with only: the smallest replay buffer
    # and measured here, in this process (the fleet's own measuring processes would hand
    # back a score later, not the one asked for now)
    small = scenario.replace(learner={"buffer_size": 1000}, eval_workers=0)
    fleet = build_fleet(small, int(job["seed"]), job["policy"])
    try:
        for node_id in scenario.joiners:
            fleet.world.network.join(node_id)  # measured once it is there, like the others
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("end"):
                break
            node_id = int(message["node"])
            learner = fleet.learners[node_id]
            learner.set_state(decode_state(message["state"]))
            score = fleet.world.evaluate(node_id, learner)
            send({"i": message["i"], "node": node_id, "score": None if math.isnan(score) else score})
    finally:
        fleet.close()


def _serve_fleet(job: dict[str, Any], send: Callable[[dict], None]) -> None:
    """Run a whole fleet; send each measurement as it is taken, then the record."""
    from .fleet import build_fleet, run_fleet

    scenario = from_dict(job["scenario"])
    parent = os.getppid()
    fleet = build_fleet(scenario, int(job["seed"]), job["policy"])
    try:
        instrument(fleet)

        def on_measure(_t: float, fl) -> None:
            if os.getppid() != parent:  # the command is gone: nobody reads this any more
                raise SystemExit(1)
            result = fl.world.result
            send({"row": row_doc(result, len(result.times) - 1)})

        result = run_fleet(fleet, on_measure)
        robots_extra(fleet, result)
        save_policies(fleet, Path(job["policies"]))
        send({"done": result.to_dict()})
    finally:
        fleet.close()


def worker_main() -> int:
    """``python -m apps.robots.run``: one job (the first line of stdin), JSON lines out."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # PyBullet and friends print at the C level: not into the protocol
    sys.stdout = open(os.devnull, "w")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command decides what an interruption keeps

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    try:
        job = json.loads(sys.stdin.readline() or "{}")
        try:
            os.nice(REFERENCE_NICENESS if job.get("job") == "fleet" else WORKER_NICENESS)
        except OSError:
            pass
        import torch

        torch.set_num_threads(1)
        if job.get("job") == "evaluate":
            _serve_evaluations(job, send)
        elif job.get("job") == "fleet":
            _serve_fleet(job, send)
        else:
            send({"error": f"unknown job {job.get('job')!r}"})
            return 2
    except (BrokenPipeError, KeyboardInterrupt):
        return 1
    except Exception as err:  # noqa: BLE001 - said to the command in one line
        try:
            send({"error": f"{type(err).__name__}: {err}"})
        except BrokenPipeError:
            pass
        return 1
    return 0


# --------------------------------------------------------------------------- frames


def episode_frames(act, task: str, cell, seed: int, *, every: int = 1, size=FRAME_SIZE, candidates: int = 20,
                   custom: str | None = None) -> tuple[list[np.ndarray], bool, list[int]]:
    """Frames of one episode of ``act(obs) -> action`` in a cell (every ``every`` steps and
    the last), whether it succeeded, and the step of each frame.

    The episode is the one of seeds ``seed .. seed + candidates - 1`` whose goal starts
    farthest from the tool: a goal next to the start is reached in two steps and shows
    nothing.
    """
    from .fleet import make_env

    env = make_env(task, cell, custom, render_mode="rgb_array", render_width=size[0], render_height=size[1])
    try:
        def distance(s: int) -> float:
            obs, _ = env.reset(seed=s)
            if not (isinstance(obs, dict) and "achieved_goal" in obs):
                return 0.0
            return float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))

        seed = max(range(seed, seed + candidates), key=distance)
        obs, info = env.reset(seed=seed)
        frames, steps = [env.render()], [0]
        done, t = False, 0
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs))
            done = terminated or truncated
            t += 1
            if t % every == 0 or done:
                frames.append(env.render())
                steps.append(t)
        return frames, bool(info.get("is_success", False)), steps
    finally:
        env.close()


def fleet_frames(actors: dict[int, Any], scenario: RobotsScenario, seed: int = 7) -> dict[int, tuple]:
    """One episode per robot, each in its own cell, with its own policy."""
    return {node_id: episode_frames(act, scenario.task, scenario.robots[node_id].cell(), seed + node_id,
                                    custom=scenario.env_id)
            for node_id, act in actors.items()}


def write_strip(episodes: dict[int, tuple], scenario: RobotsScenario, path: Path, columns: int = 6, *,
                policy: str | None = None) -> Path:
    """A PNG: one row per robot, ``columns`` frames spread over its episode; the title
    says whose policies act."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(episodes)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 1.85), squeeze=False)
    for r, (node_id, (frames, success, steps)) in enumerate(sorted(episodes.items())):
        picks = sorted(set(np.linspace(0, len(frames) - 1, columns).round().astype(int).tolist()))
        for ax in axes[r][len(picks):]:
            ax.axis("off")  # a short episode has fewer frames than columns
        for c, i in enumerate(picks):
            ax = axes[r][c]
            ax.imshow(frames[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"robot {node_id}\n{scenario.robots[node_id].arm}", fontsize=8)
            ax.set_title(f"step {steps[i]}", fontsize=7)
        axes[r][len(picks) - 1].set_xlabel("reached" if success else "not reached", fontsize=7,
                                           color="green" if success else "red")
    whose = f"{policy_words(policy)}: the robots' policies" if policy else "Trained robots"
    fig.suptitle(f"{whose} acting, each in its own cell (green ball: goal)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_gif(episodes: dict[int, tuple], path: Path, fps: int = 12, *, policy: str | None = None) -> Path:
    """An animated GIF of every robot side by side (an ended episode holds its last
    frame), with a caption band saying whose policies act."""
    from PIL import Image, ImageDraw

    ordered = [episode[0] for _, episode in sorted(episodes.items())]
    length = max(len(f) for f in ordered)
    band = 18 if policy else 0
    tiles = []
    for t in range(length):
        row = np.concatenate([f[min(t, len(f) - 1)][..., :3] for f in ordered], axis=1).astype(np.uint8)
        image = Image.fromarray(row)
        if band:
            framed = Image.new("RGB", (image.width, image.height + band), "white")
            framed.paste(image, (0, band))
            ImageDraw.Draw(framed).text((4, 3), f"{policy_words(policy)} policies acting, step {t}", fill="black")
            image = framed
        tiles.append(image)
    tiles[0].save(path, save_all=True, append_images=tiles[1:], duration=int(1000 / fps), loop=0, optimize=True)
    return path


POLICY_WORDS = {"mfd": "MFD", "isolated": "Isolated learning", "fedavg": "FedAvg", "gossip": "Gossip",
                "mfd-travel": "Travelling MFD"}


def policy_words(name: str | None) -> str:
    return POLICY_WORDS.get(name or "", name or "")


if __name__ == "__main__":
    sys.exit(worker_main())

"""An RL loop on fray_dask: one trainer and two rollout jobs share a Curriculum and weight transfer.

A tiny JAX policy (2,120 parameters) learns three lessons of a toy task: shown a number x in
0..7, answer `copy` (x), `shift` (x + 1 mod 8) or `mirror` (7 - x). `mirror` depends on `copy`:
the curriculum unlocks it once `copy` is mastered and has plateaued. Rollout jobs fetch the latest
weights, sample a lesson, play a batch of episodes, write them as JSONL with zephyr's atomic
writer and report their rewards; the trainer reads the rollouts, takes policy-gradient steps and
publishes new weights every few steps. Run it on the embedded Dask cluster (no cluster needed):

    python examples/rl_loop.py

or on a running scheduler with FRAY_CLUSTER_SPEC=dask?address=tcp://host:8786. (The jobs share
their coordinators through named actors, so they need a Dask cluster: on FRAY_CLUSTER_SPEC=local
every job would get its own.)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np

from fray_dask import Entrypoint, JobRequest, ResourceConfig, current_cluster, get_default_job_ctx
from fray_dask.rl import (
    Curriculum,
    CurriculumConfig,
    LessonConfig,
    LessonDependency,
    RolloutStats,
    SingletonActor,
    WeightTransferClient,
    WeightTransferConfig,
    WeightTransferServer,
)
from zephyr import Dataset, SyncBackend, load_jsonl

SIZE = 8  # answers 0..7
HIDDEN = 64
LESSONS = ("copy", "mirror", "shift")
TARGETS = {
    "copy": lambda x: x,
    "shift": lambda x: (x + 1) % SIZE,
    "mirror": lambda x: SIZE - 1 - x,
}


@dataclass(frozen=True)
class Settings:
    out: str  # rollouts, checkpoints and summaries go here
    steps: int  # training steps
    batch_size: int  # episodes per training step
    episodes: int  # episodes per rollout batch (one lesson each)
    publish_every: int  # publish weights every this many steps
    rollouts: int
    curriculum: CurriculumConfig
    weights: WeightTransferConfig
    timeout: float = 120.0  # seconds a job waits for the other side before giving up

    @property
    def done_marker(self) -> str:
        return os.path.join(self.out, "DONE")


def make_settings(args: argparse.Namespace) -> Settings:
    run = uuid.uuid4().hex[:8]  # one run's actors never meet another's
    out = args.out or tempfile.mkdtemp(prefix="rl-loop-")
    window = args.plateau_window
    lessons = {
        "copy": LessonConfig("copy", plateau_window=window),
        "shift": LessonConfig("shift", plateau_window=window),
        "mirror": LessonConfig(
            "mirror",
            dependencies=[LessonDependency("copy", reward_threshold=0.8)],
            plateau_window=window,
        ),
    }
    return Settings(
        out=out,
        steps=args.steps,
        batch_size=args.batch_size,
        episodes=args.episodes,
        publish_every=args.publish_every,
        rollouts=args.rollouts,
        curriculum=CurriculumConfig(
            lessons,
            actor_name=f"curriculum-{run}",
            checkpoint_path=os.path.join(out, "curriculum"),
        ),
        weights=WeightTransferConfig(coordinator_name=f"weights-{run}"),
    )


# -- the policy: an MLP from (x, lesson) to logits over answers ---------------------------------
def init_params(seed: int) -> dict:
    import jax

    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "hidden": {
            "w": jax.random.normal(k1, (SIZE * len(LESSONS), HIDDEN)),
            "b": jax.numpy.zeros(HIDDEN),
        },
        "out": {"w": jax.random.normal(k2, (HIDDEN, SIZE)) * 0.01, "b": jax.numpy.zeros(SIZE)},
    }


def features(xs: np.ndarray, lessons: list[str]) -> np.ndarray:
    """One-hot of the (lesson, x) pair."""
    rows = np.zeros((len(xs), SIZE * len(LESSONS)), np.float32)
    columns = [LESSONS.index(lesson) * SIZE + x for x, lesson in zip(xs, lessons, strict=True)]
    rows[np.arange(len(xs)), columns] = 1
    return rows


def logits(params: dict, inputs):
    import jax

    hidden = jax.nn.relu(inputs @ params["hidden"]["w"] + params["hidden"]["b"])
    return hidden @ params["out"]["w"] + params["out"]["b"]


# -- a rollout job ------------------------------------------------------------------------------
def rollout(settings: Settings, index: int) -> None:
    ctx = get_default_job_ctx()
    curriculum = SingletonActor(
        Curriculum, settings.curriculum, name=settings.curriculum.actor_name
    )
    weights = WeightTransferClient(settings.weights, ctx)
    rng = np.random.default_rng(index)
    queue = os.path.join(settings.out, "rollouts")
    backlog = -(-2 * settings.batch_size // settings.episodes)  # files: two training batches
    params, step, versions, batch = None, -1, [], 0
    waited = time.monotonic()
    while not os.path.exists(settings.done_marker):
        update = (
            weights.wait_for_update(timeout=0.5) if params is None else weights.check_for_update()
        )
        if update is not None:
            step, params = update
            versions.append(step)
        if params is None:
            if time.monotonic() - waited > settings.timeout:
                raise RuntimeError(f"rollout {index}: no weights within {settings.timeout:g} s")
            continue
        if len(glob.glob(os.path.join(queue, "r*.jsonl"))) >= backlog:
            time.sleep(0.01)  # the trainer is behind: stay close to the policy it trains
            continue
        lesson = curriculum.call("sample_lesson", index * 1_000_003 + batch)
        xs = rng.integers(SIZE, size=settings.episodes)
        scores = np.asarray(logits(params, features(xs, [lesson] * len(xs))))
        actions = (scores + rng.gumbel(size=scores.shape)).argmax(axis=1)  # sampled from softmax
        rewards = (actions == TARGETS[lesson](xs)).astype(float)
        episodes = [
            {"lesson": lesson, "x": int(x), "action": int(a), "reward": float(r), "step": step}
            for x, a, r in zip(xs, actions, rewards, strict=True)
        ]
        path = os.path.join(queue, f"r{index}-{batch:06d}.jsonl")
        list(Dataset.from_list([episodes]).flat_map(iter).write_jsonl(path).execute(SyncBackend()))
        stats = [RolloutStats(lesson, float(r)) for r in rewards]
        curriculum.call("update_lesson_stats", stats, "training", step)
        batch += 1
    summary = {"rollout": index, "batches": batch, "weight_versions": versions}
    with open(os.path.join(settings.out, f"rollout-{index}.json"), "w") as f:
        json.dump(summary, f)
    print(f"rollout {index}: {batch} batches, weight versions {versions}")


# -- the trainer job ----------------------------------------------------------------------------
def _loss(params: dict, inputs, actions, advantages):
    import jax

    logp = jax.nn.log_softmax(logits(params, inputs))
    chosen = jax.numpy.take_along_axis(logp, actions[:, None], axis=1)[:, 0]
    return -(advantages * chosen).mean()


def train(settings: Settings) -> None:
    import jax

    ctx = get_default_job_ctx()
    curriculum = SingletonActor(
        Curriculum, settings.curriculum, name=settings.curriculum.actor_name
    )
    grad = jax.jit(jax.grad(_loss))
    params = init_params(0)
    m = v = jax.tree_util.tree_map(jax.numpy.zeros_like, params)  # Adam's moments
    pending: list[dict] = []
    unlocked_at = None
    with WeightTransferServer(settings.weights, ctx) as server:
        server.serve_weights(0, params)
        for step in range(1, settings.steps + 1):
            pending = _read_rollouts(settings, pending)
            batch, pending = pending[: settings.batch_size], pending[settings.batch_size :]
            inputs = features(np.array([e["x"] for e in batch]), [e["lesson"] for e in batch])
            actions = np.array([e["action"] for e in batch])
            rewards = np.array([e["reward"] for e in batch])
            g = grad(params, inputs, actions, _advantages(rewards, [e["lesson"] for e in batch]))
            params, m, v = _adam(params, m, v, g, step)
            if step % settings.publish_every == 0 or step == settings.steps:
                server.serve_weights(step, params)
            metrics = curriculum.call("get_metrics")
            if unlocked_at is None and metrics["lessons"]["mirror"]["state"] != "locked":
                unlocked_at = step
                print(f"step {step}: the curriculum unlocked 'mirror'")
            if step % 10 == 0:
                weights = {k: round(v, 2) for k, v in metrics["sampling_weights"].items()}
                print(f"step {step}: reward {rewards.mean():.2f}, lesson weights {weights}")
        open(settings.done_marker, "w").close()
    summary = {"steps": settings.steps, "mirror_unlocked_at": unlocked_at, "curriculum": metrics}
    with open(os.path.join(settings.out, "trainer.json"), "w") as f:
        json.dump(summary, f)


def _advantages(rewards: np.ndarray, lessons: list[str]) -> np.ndarray:
    """Each reward minus the mean reward of its lesson in the batch (a baseline per lesson)."""
    lessons = np.array(lessons)
    advantages = rewards.copy()
    for lesson in set(lessons):
        advantages[lessons == lesson] -= rewards[lessons == lesson].mean()
    return advantages


def _read_rollouts(settings: Settings, pending: list[dict]) -> list[dict]:
    """Adds the episodes of rollout files until a batch is there, removing each file read (the
    folder is the queue between rollouts and trainer; zephyr commits each file whole)."""
    deadline = time.monotonic() + settings.timeout
    while len(pending) < settings.batch_size:
        for path in sorted(glob.glob(os.path.join(settings.out, "rollouts", "r*.jsonl"))):
            pending.extend(load_jsonl(path))
            os.remove(path)
        if len(pending) < settings.batch_size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"trainer: no rollouts for {settings.timeout:g} s")
            time.sleep(0.02)
    return pending


def _adam(params: dict, m: dict, v: dict, grads: dict, step: int, lr: float = 0.01):
    """One Adam step: the new parameters and first and second moments."""
    import jax

    tree_map = jax.tree_util.tree_map
    m = tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
    v = tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
    correct1, correct2 = 1 - 0.9**step, 1 - 0.999**step
    params = tree_map(
        lambda p, m, v: p - lr * (m / correct1) / (jax.numpy.sqrt(v / correct2) + 1e-8),
        params,
        m,
        v,
    )
    return params, m, v


# -- the driver ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--publish-every", type=int, default=5)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--plateau-window", type=int, default=20)
    parser.add_argument("--out", default=None, help="folder for rollouts and summaries")
    settings = make_settings(parser.parse_args(argv))
    cluster = current_cluster()
    small = ResourceConfig(cpu=0.5, ram="512m")
    trainer = cluster.launch(
        JobRequest(
            name="rl-train",
            entrypoint=Entrypoint.from_callable(train, args=[settings]),
            resources=small,
        )
    )
    rollouts = [
        cluster.launch(
            JobRequest(
                name=f"rl-rollout-{i}",
                entrypoint=Entrypoint.from_callable(rollout, args=[settings, i]),
                resources=small,
                max_retries_failure=1,  # a rollout that dies is started once more
            )
        )
        for i in range(settings.rollouts)
    ]
    cluster.monitor(trainer)  # streams the trainer's lines until it ends
    cluster.wait(trainer, raise_on_failure=True)
    try:  # rollouts stop within a batch of the trainer's DONE marker
        ended = cluster.wait(rollouts, timeout=settings.timeout)
    except TimeoutError:  # one is still queued for a worker (after losing its own): stop it
        for job in rollouts:
            cluster.terminate(job)
        ended = [cluster.poll(job) for job in rollouts]
    return _summary(settings, ended)


def _summary(settings: Settings, ended: list) -> dict:
    trainer = _read_json(os.path.join(settings.out, "trainer.json"))
    versions = {}
    for i, info in enumerate(ended):
        path = os.path.join(settings.out, f"rollout-{i}.json")
        seen = _read_json(path)["weight_versions"] if os.path.exists(path) else None
        versions[f"rollout-{i}"] = {"status": str(info.status), "weight_versions": seen}
    lessons = trainer["curriculum"]["lessons"]
    unlocked = trainer["mirror_unlocked_at"]
    print(f"\n{trainer['steps']} training steps; 'mirror' unlocked at step {unlocked}")
    for name, seen in versions.items():
        print(f"{name} ({seen['status']}): weight versions seen {seen['weight_versions']}")
    weights = trainer["curriculum"]["sampling_weights"]
    for lesson in LESSONS:
        state = lessons[lesson]
        print(
            f"lesson {lesson:6s} {state['state']:9s} success {state['success']:.2f} "
            f"weight {weights.get(lesson, 0.0):.2f} samples {state['samples']}"
        )
    return {**trainer, "rollouts": versions}


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    main()

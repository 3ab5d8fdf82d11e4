"""An RL-style run with fray_dask: one trainer and two rollout jobs share a named Curriculum actor.

Run it on the embedded Dask cluster (no cluster needed):

    python examples/rl_jobs.py

or on local subprocesses, or on a running Dask scheduler:

    FRAY_CLUSTER_SPEC=dask?address=tcp://host:8786 python examples/rl_jobs.py

(With FRAY_CLUSTER_SPEC=local each job has its own process and its own in-process actors, so
the jobs could not share the curriculum; this example needs a Dask cluster.)
"""

from __future__ import annotations

import os
import time

from fray_dask import (
    Entrypoint,
    JobRequest,
    ResourceConfig,
    create_environment,
    current_cluster,
    get_default_job_ctx,
)


class Curriculum:
    """Hands out lessons and keeps their rewards; one instance serves every job."""

    def __init__(self, lessons: list[str]):
        self.lessons = lessons
        self.rewards = {lesson: 0.0 for lesson in lessons}
        self.samples = 0

    def sample_lesson(self) -> str:
        self.samples += 1
        return min(self.lessons, key=lambda lesson: self.rewards[lesson])

    def update_lesson_stats(self, lesson: str, reward: float) -> None:
        self.rewards[lesson] += reward

    def report(self) -> dict:
        return {"samples": self.samples, "rewards": self.rewards}


def curriculum():
    ctx = get_default_job_ctx()
    handle = ctx.create_actor(
        Curriculum,
        ["arithmetic", "algebra", "proofs"],
        name=os.environ["CURRICULUM"],
        get_if_exists=True,  # the first job creates it, the others find it
        preemptible=False,  # keep it off workers that can be preempted
        num_cpus=0,
    )
    return ctx, handle


def rollout(steps: int) -> None:
    ctx, lessons = curriculum()
    for step in range(steps):
        lesson = ctx.get(lessons.sample_lesson.remote())
        reward = (step % 3) / 2
        ctx.get(lessons.update_lesson_stats.remote(lesson, reward))
        print(f"step {step}: {lesson} -> reward {reward}")


def train(expected_samples: int) -> None:
    ctx, lessons = curriculum()
    while (report := ctx.get(lessons.report.remote()))["samples"] < expected_samples:
        time.sleep(0.1)
    print(f"trained on {report['samples']} rollouts: {report['rewards']}")


def main() -> None:
    cluster = current_cluster()
    env = create_environment(env_vars={"CURRICULUM": f"curriculum-{os.getpid()}"})
    small = ResourceConfig(cpu=0.5, ram="256m")
    jobs = [
        cluster.launch(
            JobRequest(
                name="train",
                entrypoint=Entrypoint.from_callable(train, args=[2 * 4]),
                resources=small,
                environment=env,
            )
        )
    ]
    for n in range(2):
        jobs.append(
            cluster.launch(
                JobRequest(
                    name=f"rollout-{n}",
                    entrypoint=Entrypoint.from_callable(rollout, args=[4]),
                    resources=small,
                    environment=env,
                )
            )
        )
    info = cluster.monitor(jobs[0])  # streams the trainer's log lines until it ends
    print(f"{info.name}: {info.status}")
    for job in cluster.wait(jobs, raise_on_failure=True):
        print(f"{job.name}: {job.status} ({job.job_id})")
    print("rollout-0 said:", *cluster.logs(jobs[1]), sep="\n  ")


if __name__ == "__main__":
    main()

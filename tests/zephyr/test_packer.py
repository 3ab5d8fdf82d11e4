"""The driver loop's pure parts: how shard specs are packed into tasks as their cost becomes
known."""

from __future__ import annotations

from zephyr.backends.packer import Packer


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drain(packer: Packer, clock: FakeClock, seconds_per_shard: float, window: int) -> list[int]:
    """Take batches `window` at a time, finishing each round in the time its shards cost on the
    packer's slots; returns the batch sizes."""
    sizes, taken = [], []
    while True:
        batch = [packer.take() for _ in range(window)]
        batch = [b for b in batch if b]
        if not batch:
            return sizes
        taken.extend(batch)
        sizes.extend(len(b) for b in batch)
        clock.now += max(0.005, seconds_per_shard * max(len(b) for b in batch))
        packer.observe(sum(len(b) for b in batch))


def test_tiny_shards_grow_into_large_tasks_and_keep_every_spec_in_order():
    clock = FakeClock()
    specs = list(range(10_000))
    packer = Packer(iter(specs), first=64, limit=4096, slots=2, total=len(specs), clock=clock)
    taken = []
    while batch := packer.take():
        taken.extend(batch)
        clock.now += 0.005  # overhead-bound: 5 ms a task whatever its size
        packer.observe(len(batch))
    assert taken == specs

    clock = FakeClock()
    packer = Packer(iter(specs), first=64, limit=4096, slots=2, total=len(specs), clock=clock)
    sizes = _drain(packer, clock, seconds_per_shard=2e-6, window=4)
    assert sizes[:4] == [64] * 4
    assert max(sizes) > 1000, sizes
    assert len(sizes) < 40, f"10,000 tiny shards should take a few dozen tasks, not {len(sizes)}"


def test_slow_shards_run_one_per_task():
    clock = FakeClock()
    packer = Packer(iter(range(1000)), first=16, limit=4096, slots=2, total=1000, clock=clock)
    sizes = _drain(packer, clock, seconds_per_shard=2.0, window=4)
    assert sizes[:4] == [16] * 4
    assert set(sizes[4:]) == {1}


def test_the_end_of_a_stage_stays_balanced():
    clock = FakeClock()
    packer = Packer(iter(range(2000)), first=8, limit=4096, slots=4, total=2000, clock=clock)
    sizes = _drain(packer, clock, seconds_per_shard=1e-6, window=8)
    assert sum(sizes) == 2000
    # however cheap the shards, no task holds more than half a slot's share of what was left
    # (here 1/8 of the stage), so the last round has at least two tasks per slot to spread
    assert max(sizes) <= 2000 // (2 * 4), sizes


def test_without_a_limit_nothing_is_packed():
    packer = Packer(iter(range(10)), first=1)
    batches = []
    while batch := packer.take():
        batches.append(batch)
        packer.observe(1)
    assert batches == [[i] for i in range(10)]

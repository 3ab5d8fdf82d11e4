"""Shuffles: records routed by key to the next stage's shards through sorted runs on a scratch
location (keys.py: stable hashing and ordering; runs.py: the run files; scatter.py: the map side;
merge.py: the reduce side; join.py: the merge join; scratch.py: where runs go and how much a task
may buffer)."""

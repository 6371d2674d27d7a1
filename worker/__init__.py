"""The database side of training: the worker that claims runs, the jobs that read snapshots and
register models, the demo and its simulated labelers. The algorithms live in trainer/."""

"""Benchmark tooling for the model zoos: the runner (prune, verify and reload every model)
and the peer adapters (Torch-Pruning)."""

"""Simulated federations on real public images: data, partitions, the runner, baselines, results."""

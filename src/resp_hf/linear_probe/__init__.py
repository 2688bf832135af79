"""Frozen-encoder linear probing on OPERA tasks (and any saved DatasetDict)."""

from .embeddings import EmbeddingCache, embed_split, fit_length
from .probe import LinearProbe, LinearProbeConfig, train_linear_probe
from .results import aggregate, load_baselines, write_results
from .runner import BenchmarkSettings, run_benchmark

__all__ = [
    "BenchmarkSettings",
    "EmbeddingCache",
    "LinearProbe",
    "LinearProbeConfig",
    "aggregate",
    "embed_split",
    "fit_length",
    "load_baselines",
    "run_benchmark",
    "train_linear_probe",
    "write_results",
]

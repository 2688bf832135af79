"""Frozen-encoder linear probing on OPERA tasks (and any saved DatasetDict)."""

from .embeddings import EmbeddingCache, embed_split, fit_length
from .probe import EmbeddedSplit, LinearProbe, LinearProbeConfig, ProbeData, ProbeResult, train_linear_probe
from .results import aggregate, load_baselines, write_results
from .runner import BenchmarkSettings, run_benchmark

__all__ = [
    "BenchmarkSettings",
    "EmbeddedSplit",
    "EmbeddingCache",
    "LinearProbe",
    "LinearProbeConfig",
    "ProbeData",
    "ProbeResult",
    "aggregate",
    "embed_split",
    "fit_length",
    "load_baselines",
    "run_benchmark",
    "train_linear_probe",
    "write_results",
]

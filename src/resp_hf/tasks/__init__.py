"""Respiratory-sound tasks beyond OPERA: ICBHI 2017 cycles and SPRSound events and records, with a benchmark."""

from .finetune_benchmark import TASKS, TaskBenchmarkSettings, run_task_benchmark
from .icbhi import build_icbhi_cycles, check_official_counts
from .segments import SegmentWindow, decode_segments
from .sprsound import build_sprsound

__all__ = [
    "TASKS",
    "SegmentWindow",
    "TaskBenchmarkSettings",
    "build_icbhi_cycles",
    "build_sprsound",
    "check_official_counts",
    "decode_segments",
    "run_task_benchmark",
]

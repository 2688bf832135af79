"""The OPERA respiratory benchmark tasks as Hugging Face datasets."""

from .build import BuildReport, build_task
from .common import OperaDataError
from .registry import TASKS, OperaTask, get_task

__all__ = ["TASKS", "BuildReport", "OperaDataError", "OperaTask", "build_task", "get_task"]

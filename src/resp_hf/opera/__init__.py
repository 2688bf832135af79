"""The OPERA respiratory benchmark tasks as Hugging Face datasets."""

from .dataset import BuildReport, build_task
from .files import OperaDataError
from .registry import TASKS, OperaTask, get_task

__all__ = ["TASKS", "BuildReport", "OperaDataError", "OperaTask", "build_task", "get_task"]

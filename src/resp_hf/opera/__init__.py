"""The OPERA respiratory benchmark tasks as Hugging Face datasets, and the protocol OPERA probes each with."""

from .dataset import BuildReport, build_task, check_root
from .files import OPERA_VALIDATION_SEED, OperaDataError
from .protocol import ProbeProtocol, get_protocol
from .registry import TASKS, OperaTask, get_task

__all__ = [
    "OPERA_VALIDATION_SEED",
    "TASKS",
    "BuildReport",
    "OperaDataError",
    "OperaTask",
    "ProbeProtocol",
    "build_task",
    "check_root",
    "get_protocol",
    "get_task",
]

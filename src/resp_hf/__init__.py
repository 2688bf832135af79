"""resp_hf: M2D respiratory audio foundation models for Hugging Face Transformers."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

from .models.resp_m2d import *  # noqa: F403  (the public classes of the model folder)
from .models.resp_m2d import (
    RespM2DConfig,
    RespM2DFeatureExtractor,
    RespM2DForAudioClassification,
    RespM2DModel,
)
from .models.resp_m2d import __all__ as _model_folder_names

__version__ = "0.1.0"

# Local use without trust_remote_code, and remote code + auto_map in every saved folder.
AutoConfig.register(RespM2DConfig.model_type, RespM2DConfig, exist_ok=True)
AutoModel.register(RespM2DConfig, RespM2DModel, exist_ok=True)
AutoModelForAudioClassification.register(RespM2DConfig, RespM2DForAudioClassification, exist_ok=True)
AutoFeatureExtractor.register(RespM2DConfig, RespM2DFeatureExtractor, exist_ok=True)
RespM2DConfig.register_for_auto_class()
RespM2DModel.register_for_auto_class("AutoModel")
RespM2DForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
RespM2DFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

from .convert import (  # noqa: E402
    ConversionReport,
    M2DCheckpoint,
    UnsafeCheckpointError,
    convert_m2d_checkpoint,
    read_m2d_checkpoint,
)
from .quantize import quantize  # noqa: E402

__all__ = [
    *_model_folder_names,
    "ConversionReport",
    "M2DCheckpoint",
    "UnsafeCheckpointError",
    "convert_m2d_checkpoint",
    "read_m2d_checkpoint",
    "quantize",
]

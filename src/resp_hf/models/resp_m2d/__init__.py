from .configuration_resp_m2d import RespM2DConfig
from .feature_extraction_resp_m2d import RespM2DFeatureExtractor
from .modeling_resp_m2d import (
    RespM2DForAudioClassification,
    RespM2DModel,
    RespM2DModelOutput,
    RespM2DPreTrainedModel,
)
from .pipeline_resp_m2d import RespM2DAudioClassificationPipeline, RespM2DFeatureExtractionPipeline

__all__ = [
    "RespM2DAudioClassificationPipeline",
    "RespM2DConfig",
    "RespM2DFeatureExtractionPipeline",
    "RespM2DFeatureExtractor",
    "RespM2DForAudioClassification",
    "RespM2DModel",
    "RespM2DModelOutput",
    "RespM2DPreTrainedModel",
]

from .configuration_resp_m2d import RespM2DConfig
from .feature_extraction_resp_m2d import RespM2DFeatureExtractor
from .modeling_resp_m2d import RespM2DModel, RespM2DModelOutput, RespM2DPreTrainedModel

__all__ = ["RespM2DConfig", "RespM2DFeatureExtractor", "RespM2DModel", "RespM2DModelOutput", "RespM2DPreTrainedModel"]

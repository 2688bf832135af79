"""The audio-classification pipeline used by RespM2D models (loaded through `config.custom_pipelines`)."""

from pathlib import Path

from transformers import AudioClassificationPipeline

from .feature_extraction_resp_m2d import load_audio, resample, to_mono_float32


class RespM2DAudioClassificationPipeline(AudioClassificationPipeline):
    """
    `pipeline("audio-classification")` for RespM2D models. Like the standard pipeline, but:

    - local files are read with soundfile and resampled with soxr (the model's own front end; no ffmpeg needed),
      and `{"array", "sampling_rate"}` dicts at any rate are resampled with soxr (no torchaudio needed);
    - `batch_size > 1` works for clips of different lengths (features are padded along time, with attention masks);
    - `downmix=True` averages the channels of multichannel input instead of failing.

    Multi-label models apply a sigmoid (`config.problem_type="multi_label_classification"`, or pass
    `function_to_apply="sigmoid"`); single-label models a softmax.
    """

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, downmix=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply, **kwargs
        )
        if downmix is not None:
            preprocess_params["downmix"] = downmix
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs, downmix=False):
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, Path) or (isinstance(inputs, str) and not inputs.startswith(("http://", "https://"))):
            inputs = load_audio(inputs, rate, downmix=downmix)
        elif isinstance(inputs, dict) and "sampling_rate" in inputs and ("array" in inputs or "raw" in inputs):
            audio = inputs["array"] if "array" in inputs else inputs["raw"]
            inputs = resample(to_mono_float32(audio, name="audio", downmix=downmix), inputs["sampling_rate"], rate)
        elif not isinstance(inputs, (str, bytes, dict)):
            inputs = to_mono_float32(inputs, name="audio", downmix=downmix)
        processed = super().preprocess(inputs)
        # Time first, so that the pipeline's batch collation pads the frame axis.
        processed["input_features"] = processed["input_features"].transpose(1, 2)
        return processed

    def _forward(self, model_inputs):
        model_inputs["input_features"] = model_inputs["input_features"].transpose(1, 2)
        return self.model(**model_inputs)


__all__ = ["RespM2DAudioClassificationPipeline"]

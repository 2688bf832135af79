"""The audio-classification and feature-extraction pipelines of RespM2D models (loaded through
`config.custom_pipelines`)."""

import numbers
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import AudioClassificationPipeline, Pipeline
from transformers.modeling_outputs import SequenceClassifierOutput

from .audio_utils_resp_m2d import check_sampling_rate, describe_source, has_arrays, load_waveform


@dataclass
class NamedClip:
    """One clip with the name its errors use (`"audio clip 3"` in a batch) and whether its batch has arrays."""

    audio: Any
    name: str
    rate_of_arrays_only: bool


class RespM2DAudioInputs:
    """
    Input handling shared by the RespM2D pipelines:

    - file paths, http(s) URLs and encoded bytes are decoded with soundfile (WAV, FLAC, OGG, MP3; no ffmpeg needed);
      `{"array", "sampling_rate"}` dicts, torchcodec `AudioDecoder`s, and arrays or lists of floats passed with
      `sampling_rate=` are resampled with soxr (no torchaudio needed); arrays without `sampling_rate` are taken to
      be at the model's rate. Sources that carry their own rate must agree with a `sampling_rate` passed with them;
    - a list of floats is one clip; a list of anything else is a batch, whose bad clips are named by their index;
    - `batch_size > 1` works for clips of different lengths (features are padded along time, with attention masks);
    - `downmix=True` averages the channels of multichannel input instead of failing;
    - the feature extractor must match the model's config (one-line error otherwise); unknown arguments are errors.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feature_extractor.check_matches(self.model.config)

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, (list, tuple)) and not inputs:
            raise ValueError("The pipeline got an empty list: pass at least one clip.")
        if isinstance(inputs, (list, tuple)) and isinstance(inputs[0], numbers.Number):
            inputs = np.asarray(inputs, dtype=np.float32)  # one clip, as in the feature extractor
        elif isinstance(inputs, (list, tuple)):
            mixed = has_arrays(inputs)
            inputs = [NamedClip(clip, f"audio clip {index}", mixed) for index, clip in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)

    def audio_parameters(self, sampling_rate, downmix):
        """Preprocessing parameters of the audio arguments, checked before any clip is read."""
        params = {}
        if sampling_rate is not None:
            params["sampling_rate"] = check_sampling_rate(sampling_rate)
        if downmix is not None:
            params["downmix"] = downmix
        return params

    def preprocess(self, clip, sampling_rate=None, downmix=False):
        if not isinstance(clip, NamedClip):  # one clip, or an item of a dataset or generator
            clip = NamedClip(clip, "audio", has_arrays([clip]))
        inputs, name = clip.audio, clip.name
        if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
            with urllib.request.urlopen(inputs) as response:
                inputs, name = response.read(), f"the audio at {inputs}"
        rate = self.feature_extractor.sampling_rate
        waveform = load_waveform(inputs, sampling_rate, rate, downmix, name, clip.rate_of_arrays_only)
        self.feature_extractor.check_long_enough(waveform, describe_source(inputs, name))
        processed = self.feature_extractor(
            waveform, sampling_rate=rate, return_attention_mask=True, return_tensors="pt"
        )
        if self.dtype is not None:
            processed = processed.to(dtype=self.dtype)
        # Time first, so that the pipeline's batch collation pads the frame axis.
        processed["input_features"] = processed["input_features"].transpose(1, 2)
        return processed

    def _forward(self, model_inputs):
        model_inputs["input_features"] = model_inputs["input_features"].transpose(1, 2)
        return self.model(**model_inputs)


class RespM2DAudioClassificationPipeline(RespM2DAudioInputs, AudioClassificationPipeline):
    """
    `pipeline("audio-classification")` for RespM2D models; inputs as in [`RespM2DAudioInputs`].

    Multi-label models apply a sigmoid (`config.problem_type="multi_label_classification"`, or pass
    `function_to_apply="sigmoid"`); single-label models a softmax.

    `return_timeline=True` adds to each label a `timeline` of `{"start", "end", "score"}` lists: the clip head applied
    to every time step (160 ms for 16x16 patches at 16 kHz; see `frame_logits`), scored like the clip. It shows
    where in the recording the clip classifier hears each label; it is not a trained event detector.
    """

    def _sanitize_parameters(
        self, top_k=None, function_to_apply=None, sampling_rate=None, downmix=None, return_timeline=None, **kwargs
    ):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the audio-classification pipeline: {sorted(kwargs)}.")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer (the number of labels to return), got {top_k!r}.")
        _, forward_params, postprocess_params = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply
        )
        if return_timeline:
            forward_params["return_timeline"] = postprocess_params["return_timeline"] = True
        return self.audio_parameters(sampling_rate, downmix), forward_params, postprocess_params

    def _forward(self, model_inputs, return_timeline=False):
        if not return_timeline:
            return super()._forward(model_inputs)
        model_inputs["input_features"] = model_inputs["input_features"].transpose(1, 2)
        # A ModelOutput, so that the pipeline's batching splits the step tensors per clip like the logits.
        return SequenceClassifierOutput(self.model.frame_logits(**model_inputs))

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None, return_timeline=False):
        labels = super().postprocess(model_outputs, top_k, function_to_apply)
        if return_timeline:
            mask = model_outputs["step_mask"][0]
            start, end = (model_outputs[key][0][mask].tolist() for key in ("step_start", "step_end"))
            steps = [self.scores_by_label(step, function_to_apply) for step in model_outputs["step_logits"][0][mask]]
            for entry in labels:
                entry["timeline"] = {"start": start, "end": end, "score": [step[entry["label"]] for step in steps]}
        return labels

    def scores_by_label(self, logits, function_to_apply):
        """Label -> score of one step's logits, scored exactly as a clip is (softmax, sigmoid or none)."""
        entries = super().postprocess(SequenceClassifierOutput(logits=logits[None]), len(logits), function_to_apply)
        return {entry["label"]: entry["score"] for entry in entries}


class RespM2DFeatureExtractionPipeline(RespM2DAudioInputs, Pipeline):
    """
    `pipeline("feature-extraction")` for RespM2D models: the clip embedding (`pooler_output`, as `model.embed()`
    returns) of each clip, as a list of floats, or a 1-D tensor with `return_tensors=True`. Inputs as in
    [`RespM2DAudioInputs`].
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def _sanitize_parameters(self, sampling_rate=None, downmix=None, return_tensors=None, **kwargs):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the feature-extraction pipeline: {sorted(kwargs)}.")
        postprocess_params = {} if return_tensors is None else {"return_tensors": return_tensors}
        return self.audio_parameters(sampling_rate, downmix), {}, postprocess_params

    def postprocess(self, model_outputs, return_tensors=False):
        embedding = model_outputs.pooler_output[0].float()
        return embedding if return_tensors else embedding.tolist()


__all__ = ["RespM2DAudioClassificationPipeline", "RespM2DFeatureExtractionPipeline"]

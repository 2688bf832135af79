"""The audio-classification pipeline used by RespM2D models (loaded through `config.custom_pipelines`)."""

import io
import urllib.request

from transformers import AudioClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput

from .feature_extraction_resp_m2d import load_audio, load_waveform


class RespM2DAudioClassificationPipeline(AudioClassificationPipeline):
    """
    `pipeline("audio-classification")` for RespM2D models. Like the standard pipeline, but:

    - file paths, http(s) URLs and encoded bytes are decoded with soundfile (WAV, FLAC, OGG, MP3; no ffmpeg needed),
      and `{"array", "sampling_rate"}` dicts, or arrays passed with `sampling_rate=`, at any rate are resampled with
      soxr (no torchaudio needed); arrays without `sampling_rate` are taken to be at the model's rate;
    - `batch_size > 1` works for clips of different lengths (features are padded along time, with attention masks);
    - `downmix=True` averages the channels of multichannel input instead of failing;
    - unknown arguments are errors rather than ignored.

    `return_timeline=True` adds to each label a `timeline` of `{"start", "end", "score"}` lists: the clip head applied
    to every time step (160 ms for 16x16 patches at 16 kHz; see `frame_logits`), scored like the clip. It shows
    where in the recording the clip classifier hears each label; it is not a trained event detector.

    Multi-label models apply a sigmoid (`config.problem_type="multi_label_classification"`, or pass
    `function_to_apply="sigmoid"`); single-label models a softmax.
    """

    def _sanitize_parameters(
        self, top_k=None, function_to_apply=None, sampling_rate=None, downmix=None, return_timeline=None, **kwargs
    ):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the audio-classification pipeline: {sorted(kwargs)}.")
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(
            top_k=top_k, function_to_apply=function_to_apply
        )
        if sampling_rate is not None:
            preprocess_params["sampling_rate"] = sampling_rate
        if downmix is not None:
            preprocess_params["downmix"] = downmix
        if return_timeline:
            forward_params["return_timeline"] = postprocess_params["return_timeline"] = True
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs, sampling_rate=None, downmix=False):
        rate = self.feature_extractor.sampling_rate
        waveform = self.load_waveform(inputs, sampling_rate, downmix)
        processed = self.feature_extractor(
            waveform, sampling_rate=rate, return_attention_mask=True, return_tensors="pt"
        )
        if self.dtype is not None:
            processed = processed.to(dtype=self.dtype)
        # Time first, so that the pipeline's batch collation pads the frame axis.
        processed["input_features"] = processed["input_features"].transpose(1, 2)
        return processed

    def load_waveform(self, inputs, sampling_rate, downmix):
        """Mono float32 audio at the model's rate from a path, URL, bytes, dict or array."""
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
            with urllib.request.urlopen(inputs) as response:
                inputs, name = response.read(), f"the audio at {inputs}"
            return load_audio(io.BytesIO(inputs), rate, downmix=downmix, name=name)
        return load_waveform(inputs, sampling_rate, rate, downmix=downmix)

    def _forward(self, model_inputs, return_timeline=False):
        model_inputs["input_features"] = model_inputs["input_features"].transpose(1, 2)
        if not return_timeline:
            return self.model(**model_inputs)
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


__all__ = ["RespM2DAudioClassificationPipeline"]

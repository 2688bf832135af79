"""Configuration of the M2D (Masked Modeling Duo) audio encoder for respiratory sounds."""

import math
import numbers
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Front-end settings of the original M2D runtime for each supported sampling rate.
FRONT_END_DEFAULTS = {
    16000: {"n_fft": 400, "win_length": 400, "hop_length": 160, "f_min": 50.0, "f_max": 8000.0},
    32000: {"n_fft": 800, "win_length": 800, "hop_length": 320, "f_min": 50.0, "f_max": 16000.0},
}
POOLING_MODES = ("frequency", "mean", "cls")
# Far deeper than any ViT (ViT-Base has 12 blocks): a bound that keeps an edited config from building for hours.
MAX_HIDDEN_LAYERS = 1000
# Log-mel (mean, std) of M2D's ViT when a checkpoint carries no `norm_stats` (the original `norm_stats` default).
DEFAULT_NORM_STATS = (-7.1, 4.2)
# Remote-code entry points written into every saved config.json (files are copied flat next to it).
AUTO_MAP = {
    "AutoConfig": "configuration_resp_m2d.RespM2DConfig",
    "AutoModel": "modeling_resp_m2d.RespM2DModel",
    "AutoModelForAudioClassification": "modeling_resp_m2d.RespM2DForAudioClassification",
    "AutoFeatureExtractor": "feature_extraction_resp_m2d.RespM2DFeatureExtractor",
}
# `pipeline(task, model=FOLDER, trust_remote_code=True)` uses these pipelines: clips of any length and rate, batched.
CUSTOM_PIPELINES = {
    "audio-classification": {
        "impl": "pipeline_resp_m2d.RespM2DAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"],
        "type": "audio",
    },
    "feature-extraction": {
        "impl": "pipeline_resp_m2d.RespM2DFeatureExtractionPipeline",
        "pt": ["AutoModel"],
        "type": "audio",
    },
}


class RespM2DConfig(PreTrainedConfig):
    r"""
    Configuration of [`RespM2DModel`]: the log-mel front end and the ViT encoder of an M2D checkpoint.

    Args:
        sampling_rate (`int`, defaults to 16000):
            Sampling rate the model expects. 16000 and 32000 have built-in front-end defaults.
        n_fft, win_length, hop_length (`int`, *optional*):
            STFT size, Hann window length and hop in samples (400/400/160 at 16 kHz, 800/800/320 at 32 kHz).
        f_min, f_max (`float`, *optional*):
            Mel filterbank range in Hz (50-8000 at 16 kHz, 50-16000 at 32 kHz).
        window (`str`, defaults to `"hann"`):
            STFT window; only the periodic Hann window of the original runtime is supported.
        input_size (`list[int]`, defaults to `[80, 608]`):
            Unit input of the encoder: mel bins x log-mel frames per chunk. Longer audio is split into chunks of
            this size.
        patch_size (`list[int]`, defaults to `[16, 16]`):
            Patch size in mel bins x frames.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size (`int`):
            ViT width, depth, number of heads and MLP size.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon.
        qkv_bias (`bool`, defaults to `True`): whether the fused query/key/value projection has a bias.
        hidden_dropout_prob, attention_probs_dropout_prob (`float`, defaults to 0.0): dropout rates.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initializer.
        norm_mean, norm_std (`float`):
            Statistics used to normalize log-mel features, `(x - norm_mean) / norm_std`, taken from the checkpoint.
        pooling (`str`, defaults to `"frequency"`):
            How `pooler_output` (and the classifier's input) summarizes a clip: `"frequency"` averages the stacked
            frequency-band embeddings over time (F x hidden, e.g. 3840-d), `"mean"` averages all patch tokens
            (hidden-d, the original runtime's `flat_features`), `"cls"` averages the CLS token of the chunks (hidden-d).
        classifier_layer (`int` or `str`, *optional*):
            Which encoder states [`RespM2DForAudioClassification`] pools, numbered as the original M2D runtime's
            `return_layers` (and the paper's layer sweeps): layer `k` in 0..L-2 is the output of block k+1 before the
            final LayerNorm (`hidden_states[k + 1]`), layer L-1 (or -1) is the last block after it
            (`last_hidden_state`, the default when `None`); negative numbers count from the end.
            `"weighted"` learns a softmax-weighted sum of these L layers. `hidden_states` itself keeps Transformers'
            convention (index 0 = embeddings, k = block k before the final LayerNorm);
            [`RespM2DModel.layer_output`] maps a layer number to the states.
        chunks_per_pass (`int`, *optional*, defaults to 32):
            At most this many chunks go through the encoder at once in eager inference, so hour-long recordings
            need bounded activation memory (results are the same for any value). `None` encodes all at once.
        freeze_encoder (`bool`, defaults to `False`):
            Train only the classification head (linear probing).
    """

    model_type = "resp_m2d"

    def __init__(
        self,
        sampling_rate: int = 16000,
        n_fft: int | None = None,
        win_length: int | None = None,
        hop_length: int | None = None,
        f_min: float | None = None,
        f_max: float | None = None,
        window: str = "hann",
        input_size: Sequence[int] = (80, 608),
        patch_size: Sequence[int] = (16, 16),
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        norm_mean: float = DEFAULT_NORM_STATS[0],
        norm_std: float = DEFAULT_NORM_STATS[1],
        pooling: str = "frequency",
        classifier_layer: int | str | None = None,
        chunks_per_pass: int | None = 32,
        freeze_encoder: bool = False,
        **kwargs,
    ):
        check_dtype(kwargs.get("dtype", kwargs.get("torch_dtype")))
        front_end = _front_end_settings(sampling_rate, n_fft, win_length, hop_length, f_min, f_max)
        self.sampling_rate = as_integer(sampling_rate)
        self.n_fft = front_end["n_fft"]
        self.win_length = front_end["win_length"]
        self.hop_length = front_end["hop_length"]
        self.f_min = as_number("f_min", front_end["f_min"])
        self.f_max = as_number("f_max", front_end["f_max"])
        self.window = window
        self.input_size = as_size_pair("input_size", input_size)
        self.patch_size = as_size_pair("patch_size", patch_size)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.norm_mean = as_number("norm_mean", norm_mean)
        self.norm_std = as_number("norm_std", norm_std)
        self.pooling = pooling
        self.classifier_layer = classifier_layer
        self.chunks_per_pass = chunks_per_pass
        self.freeze_encoder = freeze_encoder
        self.check_settings()
        check_label_ids(kwargs.get("id2label"))  # before Transformers turns its keys into ints
        check_not_derived(kwargs)
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        kwargs["custom_pipelines"] = {**CUSTOM_PIPELINES, **(kwargs.get("custom_pipelines") or {})}
        super().__init__(**kwargs)

    def check_settings(self):
        """Raises ValueError for unsupported settings (models call it again, after `from_pretrained` overrides)."""
        check_integers(
            self,
            at_least_one=("sampling_rate", "hidden_size", "num_attention_heads", "intermediate_size")
            + ("n_fft", "win_length", "hop_length"),
            at_least_zero=("num_hidden_layers",),
        )
        not_bools = [
            f"{name}={getattr(self, name)!r}"
            for name in ("qkv_bias", "freeze_encoder")
            if not isinstance(getattr(self, name), bool)
        ]
        if not_bools:  # config.json's "false" would otherwise count as true
            raise ValueError(f"{', '.join(not_bools)} must be true or false.")
        for name in ("input_size", "patch_size"):
            if not (len(getattr(self, name)) == 2 and all(is_integer_at_least(v, 1) for v in getattr(self, name))):
                raise ValueError(f"{name}={getattr(self, name)} must be two positive integers (mel bins, frames).")
        if not (is_real(self.layer_norm_eps) and 0 < self.layer_norm_eps < math.inf):
            raise ValueError(f"layer_norm_eps={self.layer_norm_eps!r} must be a positive number.")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not (is_real(value) and 0 <= value <= 1):
                raise ValueError(f"{name}={value!r} must be a probability in [0, 1].")
        if self.num_hidden_layers > MAX_HIDDEN_LAYERS:
            raise ValueError(f"num_hidden_layers={self.num_hidden_layers} is more than {MAX_HIDDEN_LAYERS} blocks.")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of Transformers' activations (ACT2FN).")
        if self.window != "hann":
            raise ValueError(f"window={self.window!r} is not supported; M2D uses a periodic 'hann' window.")
        if self.input_size[0] % self.patch_size[0]:
            raise ValueError(
                f"The mel bins of input_size {self.input_size} must be a multiple of the patch height "
                f"{self.patch_size[0]}."
            )
        if self.input_size[1] < self.patch_size[1]:
            raise ValueError(f"The unit length {self.input_size[1]} is shorter than one patch {self.patch_size[1]}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}."
            )
        if not (math.isfinite(self.norm_mean) and math.isfinite(self.norm_std) and self.norm_std > 0):
            raise ValueError(
                f"norm_mean must be finite and norm_std finite and positive, got {self.norm_mean} and {self.norm_std}."
            )
        check_mel_range(self.sampling_rate, self.f_min, self.f_max)
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLING_MODES}.")
        layer, depth = self.classifier_layer, self.num_hidden_layers
        is_layer = is_integer_at_least(layer, -depth) and layer < depth
        if not (layer is None or layer == "weighted" or is_layer):
            raise ValueError(
                f"classifier_layer={layer!r} must be None (final output), 'weighted', "
                f"or a layer 0..{depth - 1} (-{depth}..-1 from the end)."
            )
        passes = self.chunks_per_pass
        if not (passes is None or is_integer_at_least(passes, 1)):
            raise ValueError(f"chunks_per_pass={passes!r} must be a positive integer or None (all chunks at once).")
        check_label_ids(self.id2label)

    def save_pretrained(self, save_directory, **kwargs):
        """Saves config.json and, with the remote code, the pipeline files that `custom_pipelines` names."""
        if self._auto_class is not None:
            Path(save_directory).mkdir(parents=True, exist_ok=True)
            copy_pipeline_code(self.custom_pipelines, save_directory)
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """The settings in `json_file`, which must hold one JSON object (anything else is refused, naming the file)."""
        settings = super()._dict_from_json_file(json_file)
        if not isinstance(settings, dict):
            raise ValueError(f"{json_file} must hold one JSON object of settings, not a {type(settings).__name__}.")
        return settings

    @property
    def num_mel_bins(self):
        """Number of mel bins of the log-mel input."""
        return self.input_size[0]

    @property
    def unit_frames(self):
        """Log-mel frames per encoder chunk."""
        return self.input_size[1]

    @property
    def num_frequency_patches(self):
        """Number of frequency bands (patch rows) F."""
        return self.input_size[0] // self.patch_size[0]

    @property
    def time_patches_per_chunk(self):
        """Number of patch columns in a full chunk (frames left over by the strided patching are ignored)."""
        return self.input_size[1] // self.patch_size[1]

    @property
    def frame_embedding_size(self):
        """Size of one row of `frame_embeddings`: F x hidden (3840 for ViT-Base on 80 mel bins with 16x16 patches)."""
        return self.num_frequency_patches * self.hidden_size

    @property
    def pooled_size(self):
        """Size of `pooler_output` under the configured pooling."""
        return self.frame_embedding_size if self.pooling == "frequency" else self.hidden_size


def copy_pipeline_code(custom_pipelines, folder):
    """
    Copies the modules of `custom_pipelines` (and what they import) next to config.json: the model files do not import
    the pipelines, so `save_pretrained` would not copy them otherwise.
    """
    here = Path(__file__).parent
    for task in custom_pipelines.values():
        module_file = here / f"{task['impl'].split('.')[0]}.py"
        if not module_file.is_file():  # remote code loaded without its pipeline file
            logger.warning(f"{module_file.name} is not next to {Path(__file__).name}: saved without it.")
            continue
        for needed in [module_file, *get_relative_import_files(module_file)]:
            shutil.copyfile(needed, Path(folder) / Path(needed).name)


def check_integers(settings, at_least_one, at_least_zero=()):
    """Raises ValueError naming every setting of `settings` (attributes) that is not an integer at its lower bound."""
    bounds = {name: 1 for name in at_least_one} | {name: 0 for name in at_least_zero}
    bad = [
        f"{name}={getattr(settings, name)!r} (an integer >= {bound})"
        for name, bound in bounds.items()
        if not is_integer_at_least(getattr(settings, name), bound)
    ]
    if bad:
        raise ValueError(f"Invalid settings: {', '.join(bad)}.")


def check_not_derived(settings) -> None:
    """Refuses settings that the config derives from others (its properties, e.g. num_mel_bins = input_size[0])."""
    derived = [name for name in settings if isinstance(vars(RespM2DConfig).get(name), property)]
    if derived:
        raise ValueError(
            f"{', '.join(derived)} cannot be set: derived from the other settings (e.g. num_mel_bins is input_size[0])."
        )


def check_label_ids(id2label) -> None:
    """
    Raises ValueError unless `id2label` (None when unset) maps each class id 0..n-1, as an integer or an integer
    string (config.json's keys), to a name: pipelines and model cards look up every id.
    """
    if id2label is None:
        return
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must map class ids to label names, got a {type(id2label).__name__}.")
    count = len(id2label)
    wrong = [repr(key) for key in id2label if label_id(key) not in range(count)]
    missing = [str(i) for i in sorted(set(range(count)) - {label_id(key) for key in id2label})]
    problems = [f"unexpected keys {first_few(wrong)}"] * bool(wrong)
    problems += [f"missing ids {first_few(missing)}"] * bool(missing)
    if problems:
        raise ValueError(
            f"id2label must map the class ids 0..{count - 1} (integers or integer strings) to names, got "
            f"{' and '.join(problems)}."
        )


def label_id(key):
    """A class id given as an int or a string of digits (as JSON keys are), else None."""
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    return key if is_integer_at_least(key, 0) else None


def first_few(names, most=5):
    """The first `most` names, comma-separated, with '...' when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def as_integer(value):
    """An integral number (16000.0 from JSON, numpy integers) as an int; anything else as it is, for the checks."""
    if is_real(value) and float(value).is_integer():
        return int(value)
    return value


def is_real(value) -> bool:
    """Whether `value` is a real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_size_pair(name: str, value) -> list:
    """`value` (a sequence or array of integral numbers) as a list of ints; a ValueError naming `name` otherwise."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name}={value!r} must be two positive integers (mel bins, frames).")
    return [as_integer(v) for v in value]


def as_number(name: str, value) -> float:
    """`value` (a Python or numpy real number) as a float, or a ValueError naming the setting."""
    if not is_real(value):
        raise ValueError(f"{name}={value!r} must be a number.")
    return float(value)


def check_dtype(dtype) -> None:
    """Refuses a `dtype` string that is not a torch dtype (Transformers would fail with an AttributeError)."""
    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', 'float16').")


def is_integer_at_least(value, bound):
    return isinstance(value, int) and not isinstance(value, bool) and value >= bound


def check_mel_range(sampling_rate, f_min, f_max):
    """Raises ValueError unless 0 <= f_min < f_max <= the Nyquist frequency (empty mel filters otherwise)."""
    if not 0 <= f_min < f_max <= sampling_rate / 2:
        raise ValueError(
            f"The mel range must satisfy 0 <= f_min < f_max <= sampling_rate / 2 = {sampling_rate / 2:g} Hz, "
            f"got f_min={f_min:g} and f_max={f_max:g}."
        )


def _front_end_settings(sampling_rate, n_fft, win_length, hop_length, f_min, f_max):
    given = {"n_fft": n_fft, "win_length": win_length, "hop_length": hop_length, "f_min": f_min, "f_max": f_max}
    missing = [name for name, value in given.items() if value is None]
    if missing and sampling_rate not in FRONT_END_DEFAULTS:
        raise ValueError(
            f"No front-end defaults for sampling_rate={sampling_rate} (known: {sorted(FRONT_END_DEFAULTS)}); "
            f"set {', '.join(missing)} explicitly."
        )
    defaults = FRONT_END_DEFAULTS.get(sampling_rate, {})
    return {name: defaults[name] if value is None else value for name, value in given.items()}


__all__ = ["RespM2DConfig"]

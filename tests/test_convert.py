import argparse
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import GOLDEN, GOLDEN_CHECKPOINT, OPERA

from resp_hf import RespM2DModel, UnsafeCheckpointError, convert_m2d_checkpoint
from resp_hf.cli import main as cli_main
from resp_hf.convert import load_checkpoint, parse_checkpoint_name

GOLDEN_DROPPED = {
    "decoder_blocks": 12,
    "decoder_embed": 2,
    "decoder_norm": 2,
    "decoder_pos_embed": 1,
    "decoder_pred": 2,
    "mask_token": 1,
    "target_blocks": 24,
    "target_norm": 2,
}
REMOTE_CODE = [
    "audio_utils_resp_m2d.py",
    "configuration_resp_m2d.py",
    "feature_extraction_resp_m2d.py",
    "modeling_resp_m2d.py",
    "pipeline_resp_m2d.py",
]

# Runs in a fresh interpreter where `resp_hf` cannot be imported: only the folder's remote code is used.
PARITY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["resp_hf"] = None
    import numpy as np, soundfile, torch
    from transformers import AutoFeatureExtractor, AutoModel

    folder, golden = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    flat = AutoModel.from_pretrained(folder, trust_remote_code=True, pooling="mean").eval()
    extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    expected = np.load(golden + "/expected.npz")
    meta = json.load(open(golden + "/meta.json"))
    report = {"classes": [type(model).__module__, type(extractor).__module__]}
    for name, info in meta.items():
        audio, rate = soundfile.read(golden + "/inputs/" + info["wav"], dtype="float32")
        inputs = extractor(audio, sampling_rate=rate)
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
            flat_out = flat(**inputs)
        pairs = {
            "log_mel": inputs["input_features"][0],
            "frame_embeddings": out.frame_embeddings[0],
            "clip_embedding": out.pooler_output[0],
            "clip_embedding_flat": flat_out.pooler_output[0],
        }
        if name + "/hidden_states" in expected:
            pairs["hidden_states"] = torch.stack([h[0, 0] for h in out.hidden_states])
            pairs["last_hidden_state"] = out.last_hidden_state[0, 0]
        for key, value in pairs.items():
            target = expected[name + "/" + key]
            report[name + "/" + key] = (
                float(np.abs(value.numpy() - target).max())
                if value.shape == target.shape
                else f"shape {tuple(value.shape)}"
            )
    print(json.dumps(report))
    """
)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "resp_hf.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def test_cli_conversion_matches_the_original_runtime_in_a_fresh_process(tmp_path, golden_expected):
    folder = tmp_path / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = run_cli("convert", GOLDEN_CHECKPOINT, folder, env=env)
    assert result.returncode == 0, result.stderr
    assert "dropped 46 non-encoder tensors" in result.stdout
    script = tmp_path / "parity.py"
    script.write_text(PARITY_SCRIPT)
    parity = subprocess.run(
        [sys.executable, script, folder, GOLDEN], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert parity.returncode == 0, parity.stderr
    report = json.loads(parity.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in report.pop("classes"))
    assert set(report) == set(golden_expected)
    errors = {key: value for key, value in report.items() if isinstance(value, str) or value >= 1e-3}
    assert not errors, errors


def test_converted_folder_is_complete_and_self_contained(golden_folder):
    files = sorted(path.name for path in golden_folder.iterdir())
    assert files == sorted(["README.md", "config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_CODE])
    config = json.loads((golden_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_resp_m2d.RespM2DConfig",
        "AutoModel": "modeling_resp_m2d.RespM2DModel",
        "AutoModelForAudioClassification": "modeling_resp_m2d.RespM2DForAudioClassification",
        "AutoFeatureExtractor": "feature_extraction_resp_m2d.RespM2DFeatureExtractor",
    }
    assert (
        config["custom_pipelines"]["audio-classification"]["impl"]
        == "pipeline_resp_m2d.RespM2DAudioClassificationPipeline"
    )
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 768, 12)
    assert (config["norm_mean"], config["norm_std"]) == pytest.approx((-5.3, 3.9))
    preprocessor = json.loads((golden_folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_resp_m2d.RespM2DFeatureExtractor"
    assert (preprocessor["mean"], preprocessor["std"]) == (config["norm_mean"], config["norm_std"])
    for name in REMOTE_CODE:
        source = (golden_folder / name).read_text()
        assert "resp_hf" not in source, name
        imports = [line for line in source.splitlines() if line.startswith("from .")]
        assert all(line.split()[1].lstrip(".") + ".py" in REMOTE_CODE for line in imports), imports
    card = (golden_folder / "README.md").read_text()
    assert "m2d_vit_base-80x608p16x16p16k-golden/checkpoint-300.pth" in card
    assert "| clip embedding | 3840-d" in card and "mean -5.3, std 3.9" in card
    assert card.startswith("---\n") and "library_name: transformers" in card.split("---")[1]


def golden_state_dict():
    return load_checkpoint(GOLDEN_CHECKPOINT)["model"]


def encoder_only(state_dict):
    prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "norm_stats")
    return {key: value for key, value in state_dict.items() if key.startswith(prefixes)}


def save_checkpoint(tmp_path, payload, folder="m2d_vit_base-80x608p16x16p16k-variant", filename="checkpoint.pth"):
    path = tmp_path / folder / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def variant(kind):
    full = golden_state_dict()
    encoder = encoder_only(full)
    extra = torch.zeros(4, 4)
    if kind == "evar_fine_tuned":
        state = {f"module.ar.runtime.backbone.{k}": v for k, v in encoder.items()}
        state.update(
            {"module.head.norm.running_mean": torch.zeros(3840), "module.head.mlp.mlp.0.weight": torch.zeros(5, 3840)}
        )
        return state, {"module": 2}
    if kind == "portable_runtime":
        state = {f"backbone.{k}": v for k, v in encoder.items()}
        state.update({"head.weight": torch.zeros(5, 3840), "head_norm.running_mean": torch.zeros(3840)})
        return state, {"head": 1, "head_norm": 1}
    if kind == "encoder_only_release":
        return {"model": encoder, "args": argparse.Namespace(model="m2d_vit_base")}, {}
    if kind == "m2d_x":
        return {"model": {**full, "offline_predictor.weight": extra, "offline_predictor.bias": extra[0]}}, {
            **GOLDEN_DROPPED,
            "offline_predictor": 2,
        }
    if kind == "m2d_clap":
        return {"model": {**encoder, "audio_proj.0.weight": extra, "text_proj.weight": extra}}, {
            "audio_proj": 1,
            "text_proj": 1,
        }
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["evar_fine_tuned", "portable_runtime", "encoder_only_release", "m2d_x", "m2d_clap"])
def test_checkpoint_variants_give_the_same_encoder(tmp_path, golden_folder, kind):
    payload, expected_dropped = variant(kind)
    report = convert_m2d_checkpoint(save_checkpoint(tmp_path, payload), tmp_path / "out", write_card=False)
    assert report.dropped == expected_dropped
    assert (report.config.norm_mean, report.config.norm_std) == pytest.approx((-5.3, 3.9))
    if kind == "m2d_clap":
        assert any("audio_proj, text_proj" in note for note in report.notes)
    converted = RespM2DModel.from_pretrained(tmp_path / "out").state_dict()
    reference = RespM2DModel.from_pretrained(golden_folder).state_dict()
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[key], reference[key]) for key in reference)


def test_golden_report_lists_dropped_tensors(tmp_path):
    report = convert_m2d_checkpoint(GOLDEN_CHECKPOINT, tmp_path / "out", write_card=False)
    assert report.dropped == GOLDEN_DROPPED
    assert report.notes == []
    assert "dropped 46 non-encoder tensors" in str(report)


def test_missing_norm_stats_fall_back_to_the_m2d_default(tmp_path):
    encoder = encoder_only(golden_state_dict())
    del encoder["norm_stats"]
    report = convert_m2d_checkpoint(save_checkpoint(tmp_path, {"model": encoder}), tmp_path / "out", write_card=False)
    assert (report.config.norm_mean, report.config.norm_std) == (-7.1, 4.2)
    assert any("norm_stats" in note for note in report.notes)


def official_state_dict(depth, width, mlp, grid, patch, seed=0):
    """A random encoder in the original timm naming, as official M2D releases store it."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + grid[0] * grid[1], width),
        "patch_embed.proj.weight": (width, 1, *patch),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
    }
    for i in range(depth):
        tensors.update(
            {
                f"blocks.{i}.norm1.weight": (width,),
                f"blocks.{i}.norm1.bias": (width,),
                f"blocks.{i}.attn.qkv.weight": (3 * width, width),
                f"blocks.{i}.attn.qkv.bias": (3 * width,),
                f"blocks.{i}.attn.proj.weight": (width, width),
                f"blocks.{i}.attn.proj.bias": (width,),
                f"blocks.{i}.norm2.weight": (width,),
                f"blocks.{i}.norm2.bias": (width,),
                f"blocks.{i}.mlp.fc1.weight": (mlp, width),
                f"blocks.{i}.mlp.fc1.bias": (mlp,),
                f"blocks.{i}.mlp.fc2.weight": (width, mlp),
                f"blocks.{i}.mlp.fc2.bias": (width,),
            }
        )
    state = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in tensors.items()}
    state["norm_stats"] = torch.tensor([-6.5, 4.5])
    return state


@pytest.mark.parametrize(
    "name, grid, patch, expected",
    [
        (
            "m2d_as_vit_base-80x1001p16x16p32k-240413_AS-FT_enconly",
            (5, 62),
            (16, 16),
            dict(rate=32000, n_fft=800, hop=320, f_max=16000.0, steps=62),
        ),
        (
            "m2d_clap_vit_base-80x1001p16x16-240501",
            (5, 62),
            (16, 16),
            dict(rate=16000, n_fft=400, hop=160, f_max=8000.0, steps=62),
        ),
        (
            "m2d_vit_base-80x200p80x4-test",
            (1, 50),
            (80, 4),
            dict(rate=16000, n_fft=400, hop=160, f_max=8000.0, steps=50),
        ),
    ],
)
def test_config_is_inferred_from_the_name_and_shapes(tmp_path, name, grid, patch, expected):
    state = official_state_dict(depth=3, width=96, mlp=160, grid=grid, patch=patch)
    report = convert_m2d_checkpoint(save_checkpoint(tmp_path, {"model": state}, folder=name), tmp_path / "out")
    config = report.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        3,
        96,
        1,
        160,
    )
    assert config.input_size == parse_checkpoint_name(name)["input_size"] and config.patch_size == list(patch)
    assert (config.sampling_rate, config.n_fft, config.hop_length, config.f_max) == (
        expected["rate"],
        expected["n_fft"],
        expected["hop"],
        expected["f_max"],
    )
    assert config.time_patches_per_chunk == expected["steps"]
    assert config.frame_embedding_size == grid[0] * 96
    model = RespM2DModel.from_pretrained(tmp_path / "out")
    assert torch.equal(model.embeddings.position_embeddings, state["pos_embed"])
    assert torch.equal(model.encoder.layer[2].mlp.fc2.weight, state["blocks.2.mlp.fc2.weight"])
    with torch.no_grad():
        output = model(torch.randn(1, 80, config.unit_frames + 20))
    # The original pads a 20-frame last piece to whole patches: ceil(20 / patch width) more time steps.
    assert output.frame_embeddings.shape == (1, expected["steps"] + math.ceil(20 / patch[1]), grid[0] * 96)


def test_name_can_be_given_when_the_folder_is_renamed(tmp_path):
    path = save_checkpoint(tmp_path, {"model": encoder_only(golden_state_dict())}, folder="my_weights")
    with pytest.raises(ValueError, match="pass that name explicitly"):
        convert_m2d_checkpoint(path, tmp_path / "out")
    result = run_cli("convert", path, tmp_path / "out", "--name", "m2d_vit_base-80x608p16x16p16k", "--no-card")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out" / "README.md").exists()
    assert RespM2DModel.from_pretrained(tmp_path / "out").config.input_size == [80, 608]


def test_name_that_contradicts_the_weights_is_an_error(tmp_path):
    path = save_checkpoint(tmp_path, {"model": encoder_only(golden_state_dict())}, folder="m2d_vit_base-80x1001p16x16")
    with pytest.raises(
        ValueError,
        match=r"input size \[80, 1001\] with patch size \[16, 16\] \(311 positions\), but pos_embed holds 191",
    ):
        convert_m2d_checkpoint(path, tmp_path / "out")
    path = save_checkpoint(tmp_path, {"model": encoder_only(golden_state_dict())}, folder="m2d_vit_base-80x608p16x8")
    with pytest.raises(ValueError, match=r"patch size \[16, 8\].*kernel \[16, 16\]"):
        convert_m2d_checkpoint(path, tmp_path / "out")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("blocks.1.mlp.fc2.weight"), "missing: encoder.layer.1.mlp.fc2.weight"),
        (
            lambda s: s.update({"blocks.0.attn.proj.weight": torch.zeros(768, 700)}),
            "wrong shape: encoder.layer.0.attention.proj.weight",
        ),
        (
            lambda s: s.update({"blocks.0.ls1.gamma": torch.zeros(768)}),
            "Unrecognized encoder weight 'blocks.0.ls1.gamma'",
        ),
        (
            lambda s: s.update(
                {k.replace("blocks.0.", "blocks.3."): v for k, v in s.items() if k.startswith("blocks.0.")}
            ),
            r"lacks blocks 2 \(found blocks \[0, 1, 3\]\)",
        ),
        (lambda s: s.pop("pos_embed"), "lacks the encoder weight 'embeddings.position_embeddings'"),
        (lambda s: s.update({"norm_stats": torch.zeros(3)}), r"norm_stats must hold \(mean, std\)"),
    ],
)
def test_malformed_checkpoints_are_clear_errors(tmp_path, edit, message):
    state = encoder_only(golden_state_dict())
    edit(state)
    with pytest.raises(ValueError, match=message):
        convert_m2d_checkpoint(save_checkpoint(tmp_path, {"model": state}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def hostile(tmp_path, edit):
    """A copy of the golden encoder changed by `edit`, saved in an official folder; returns its path."""
    state = encoder_only(golden_state_dict())
    edit(state)
    return save_checkpoint(tmp_path, {"model": state})


def assert_refused(tmp_path, path, message, name=None):
    with pytest.raises(ValueError, match=message) as error:
        convert_m2d_checkpoint(path, tmp_path / "out", name=name)
    assert str(path) in str(error.value) and len(str(error.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_huge_block_number_is_refused_without_allocating_by_it(tmp_path):
    def add_block(state):
        state["blocks.1000000000000.norm1.weight"] = state["blocks.0.norm1.weight"]

    assert_refused(tmp_path, hostile(tmp_path, add_block), r"lacks blocks 2 \(found blocks \[0, 1, 1000000000000\]\)")


def test_a_wide_positional_table_is_refused_without_building_a_model_of_its_width(tmp_path):
    """A 19200-wide pos_embed (15 MB) beside ViT-Base blocks would make a 19200-wide encoder (tens of GB)."""

    def widen(state):
        state["pos_embed"] = torch.zeros(1, 191, 19200)

    wrong = r"wrong shape: embeddings.cls_token: checkpoint \(1, 1, 768\), model \(1, 1, 19200\); .* and 21 more\.$"
    assert_refused(tmp_path, hostile(tmp_path, widen), r"\(2 layers, hidden 19200, .*\): " + wrong)


@pytest.mark.parametrize(
    "name, message",
    [
        ("m2d-80x99999999999999p16x16", r"\(31249999999996 positions\), but pos_embed holds 191 positions"),
        ("m2d-81x608p16x16", r"mel bins of input_size \[81, 608\] must be a multiple of the patch height 16"),
        ("m2d-80x608p16x0", r"name says patch size \[16, 0\], but the patch embedding has kernel \[16, 16\]"),
        ("", "the name is empty; omit it to use the checkpoint's folder name"),
    ],
    ids=["huge_input", "mels_not_a_multiple", "zero_patch", "empty"],
)
def test_names_that_do_not_fit_the_weights_are_refused_before_building_a_model(tmp_path, name, message):
    assert_refused(tmp_path, hostile(tmp_path, lambda s: None), message, name=name)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(pos_embed=5), "'pos_embed' must be a floating-point tensor, got a int"),
        (lambda s: s.update(pos_embed="x"), "'pos_embed' must be a floating-point tensor, got a str"),
        (lambda s: s.update({"norm.weight": {"a": torch.zeros(2)}}), "'norm.weight' must be a floating-point tensor"),
        (lambda s: s.update(cls_token=torch.zeros(1, 1, 768, dtype=torch.int64)), "got a torch.int64 tensor"),
        (lambda s: s.update(pos_embed=torch.tensor(1.0)), r"'pos_embed' must be a non-empty 3-d tensor, got .* \(\)"),
        (lambda s: s.update({"blocks.0.mlp.fc1.weight": torch.tensor(1.0)}), "'blocks.0.mlp.fc1.weight' .* 2-d"),
        (lambda s: s.update({"blocks.0.norm1.bias": torch.zeros(768, 1)}), "'blocks.0.norm1.bias' .* 1-d"),
        (
            lambda s: s.update(pos_embed=torch.zeros(1, 191, 0)),
            r"'pos_embed' must be a non-empty tensor, .* \(1, 191, 0\)",
        ),
        (lambda s: s.update({5: torch.zeros(2)}), "holds a state-dict key of type int; keys must be strings"),
        (lambda s: s.update({"blocks.\u00b2.norm1.weight": torch.zeros(2)}), "Unrecognized encoder weight"),
        (lambda s: s.pop("pos_embed"), "lacks the encoder weight 'embeddings.position_embeddings'"),
        (lambda s: s.update(norm_stats="x"), r"norm_stats must hold \(mean, std\) as two real numbers, got a str"),
        (lambda s: s.update(norm_stats=None), r"norm_stats must hold \(mean, std\) .*, got a NoneType"),
        (lambda s: s.update(norm_stats=torch.tensor([1 + 2j, 3])), r"norm_stats must hold .* torch.complex64 tensor"),
        (lambda s: s.update(norm_stats=torch.tensor([True, True])), r"norm_stats must hold .* torch.bool tensor"),
        (
            lambda s: s.update(norm_stats=[-5.0, 0.0]),
            "norm_stats must be finite with std > 0, got mean -5.0 and std 0.0",
        ),
        (lambda s: s.update(norm_stats=[-5.0, float("inf")]), "norm_stats must be finite with std > 0"),
    ],
    ids=[
        "pos_embed_int",
        "pos_embed_str",
        "dict_weight",
        "integer_tensor",
        "pos_embed_0d",
        "fc1_0d",
        "bias_2d",
        "pos_embed_empty",
        "int_key",
        "unicode_digit_block",
        "no_pos_embed",
        "norm_stats_str",
        "norm_stats_none",
        "norm_stats_complex",
        "norm_stats_bool",
        "norm_std_zero",
        "norm_std_inf",
    ],
)
def test_wrong_types_and_shapes_are_one_line_errors_naming_the_file(tmp_path, edit, message):
    assert_refused(tmp_path, hostile(tmp_path, edit), message)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.update({"backbone.blocks.0.mlp.fc1.weight": torch.zeros(3072, 768)}),
            r"'blocks.0.mlp.fc1.weight' and 'backbone.blocks.0.mlp.fc1.weight' -> 'encoder.layer.0.mlp.fc1.weight'\.$",
        ),
        (
            lambda s: s.update({"module.ar.runtime.backbone.norm.bias": torch.zeros(768)}),
            r"'norm.bias' and 'module.ar.runtime.backbone.norm.bias' -> 'layernorm.bias'\.$",
        ),
        (
            lambda s: s.update(
                {
                    "target_blocks.0.norm1.weight": torch.ones(768),
                    "target_layers.0.layernorm_before.weight": s["norm.bias"],
                }
            ),
            r"'target_blocks.0.norm1.weight' and 'target_layers.0.layernorm_before.weight' -> "
            r"'target_layers.0.layernorm_before.weight'\.$",
        ),
        (
            lambda s: s.update({f"backbone.{key}": value for key, value in list(s.items())}),
            r"overwrite the other: 'cls_token' and 'backbone.cls_token' -> 'embeddings.cls_token'; .* and \d+ more\.$",
        ),
    ],
    ids=["backbone_copy", "evar_copy", "official_and_resp_hf_name", "whole_encoder_twice"],
)
def test_weights_that_convert_to_one_name_are_refused_naming_them(tmp_path, edit, message):
    """Two keys that become one weight (e.g. with and without a wrapper prefix) would silently overwrite each other."""
    assert_refused(tmp_path, hostile(tmp_path, edit), "holds weights that convert to the same name.*" + message)


def test_cli_refuses_a_hostile_checkpoint_in_one_line(tmp_path, capsys):
    path = hostile(tmp_path, lambda s: s.update(pos_embed=torch.tensor(1.0)))
    assert cli_main(["convert", str(path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert str(path) in error and "'pos_embed' must be a non-empty 3-d tensor" in error
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8)), "not a PyTorch checkpoint"),
        (b"PK\x03\x04" + bytes(500), "not a readable PyTorch checkpoint"),
        (b"just some text, not a checkpoint", "not a readable PyTorch checkpoint"),
        ([1, 2, 3], "holds no state dict of tensors"),
        ({"model": {"note": "no tensors here"}}, "holds no state dict of tensors"),
        ({"model": {"decoder_pred.weight": torch.zeros(2)}}, "holds no M2D encoder weights"),
    ],
    ids=["random_bytes", "broken_zip", "text", "list", "no_tensors", "no_encoder"],
)
def test_files_that_are_not_m2d_checkpoints_are_refused(tmp_path, content, message):
    path = tmp_path / "m2d_vit_base-80x608p16x16" / "checkpoint.pth"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        convert_m2d_checkpoint(path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        convert_m2d_checkpoint(path.with_name("absent.pth"), tmp_path / "out")


class Payload:
    """Unpickling this runs `os.system`: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_was_executed"
    state = encoder_only(golden_state_dict())
    path = save_checkpoint(tmp_path, {"model": state, "args": Payload(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"would call .*system.*Nothing from the file was executed"):
        convert_m2d_checkpoint(path, tmp_path / "out")
    result = run_cli("convert", path, tmp_path / "out")
    assert result.returncode == 2 and "Refused to load" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_safetensors_checkpoints_convert_too(tmp_path, golden_folder):
    path = tmp_path / "m2d_vit_base-80x608p16x16p16k-st" / "model.safetensors"
    path.parent.mkdir()
    safetensors.torch.save_file(encoder_only(golden_state_dict()), path)
    convert_m2d_checkpoint(path, tmp_path / "out")
    converted = RespM2DModel.from_pretrained(tmp_path / "out").embeddings.position_embeddings
    assert torch.equal(converted, RespM2DModel.from_pretrained(golden_folder).embeddings.position_embeddings)


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("m2d_vit_base-80x608p16x16-221006-mr7", ("m2d_vit_base", [80, 608], [16, 16], 16000)),
        ("m2d_vit_base-80x608p16x16p16k", ("m2d_vit_base", [80, 608], [16, 16], 16000)),
        ("m2d_as_vit_base-80x1001p16x16p32k-240413", ("m2d_as_vit_base", [80, 1001], [16, 16], 32000)),
        ("m2d_vit_base-80x200p80x4", ("m2d_vit_base", [80, 200], [80, 4], 16000)),
        ("m2d_clap_vit_base-80x1001p16x16p16kpBpTI-2025", ("m2d_clap_vit_base", [80, 1001], [16, 16], 16000)),
        ("m2d_clap_vit_base-80x1001p16x16p32kpA", ("m2d_clap_vit_base", [80, 1001], [16, 16], 32000)),
    ],
)
def test_official_names_are_parsed(name, parsed):
    info = parse_checkpoint_name(name)
    assert (info["model"], info["input_size"], info["patch_size"], info["sampling_rate"]) == parsed


@pytest.mark.parametrize(
    "name",
    [
        "m2d_vit_base-80x608p16x16pA",  # the original reads the third field as the sampling rate: 'A' is none
        "m2d_vit_base-80x608p16x16p8k",
        "m2d_vit_base-80x608",
        "m2d_vit_base",
    ],
)
def test_names_without_a_known_rate_or_sizes_are_refused(name):
    with pytest.raises(ValueError, match="Cannot read the input and patch size"):
        parse_checkpoint_name(name)


def test_m2d_clap_2025_names_with_text_encoder_parameters_convert(tmp_path, golden_folder):
    folder = "m2d_clap_vit_base-80x608p16x16p16kpBpTI-2025"
    report = convert_m2d_checkpoint(save_checkpoint(tmp_path, golden_state_dict(), folder=folder), tmp_path / "out")
    assert "name parameters B, TI (M2D-CLAP's text-encoder settings) do not concern the audio encoder" in report.notes
    assert report.config.sampling_rate == 16000 and report.config.input_size == [80, 608]
    converted = RespM2DModel.from_pretrained(tmp_path / "out").state_dict()
    golden = RespM2DModel.from_pretrained(golden_folder).state_dict()
    assert converted.keys() == golden.keys() and all(torch.equal(converted[k], golden[k]) for k in golden)


def test_the_name_comes_from_the_folder_a_link_sits_in_not_its_target(tmp_path):
    """As in a Hub cache: snapshots/<revision>/<official folder>/weights.pth links to blobs/<hash>."""
    blob = save_checkpoint(tmp_path, {"model": encoder_only(golden_state_dict())}, folder="blobs")
    link = tmp_path / "snapshots" / "abc123" / "m2d_vit_base-80x608p16x16-221006-mr7_enconly" / "weights.pth"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    report = convert_m2d_checkpoint(link, tmp_path / "out")
    assert report.config.input_size == [80, 608] and report.config.patch_size == [16, 16]
    (link.parent / "sub").mkdir()
    again = convert_m2d_checkpoint(link.parent / "sub" / ".." / "weights.pth", tmp_path / "again")  # '..' read as such
    assert again.config.input_size == [80, 608]


WITHOUT_TRAIN_EXTRAS = """
import json, sys
for name in ("datasets", "sklearn", "accelerate", "matplotlib", "openpyxl", "tensorboard"):
    sys.modules[name] = None  # the [train] extras are not installed
import numpy as np
from transformers import pipeline
from resp_hf import RespM2DModel
from resp_hf.cli import main
assert main(["convert", sys.argv[1], sys.argv[2]]) == 0
model = RespM2DModel.from_pretrained(sys.argv[2])
embedding = model.embed(np.zeros(16000, dtype=np.float32) + 0.01, sampling_rate=16000)
scores = pipeline("audio-classification", model=sys.argv[2], trust_remote_code=True)(sys.argv[3])
print(json.dumps({"size": embedding.shape[1], "labels": len(scores)}))
"""


def test_conversion_embedding_and_the_pipeline_need_no_training_extras(tmp_path):
    recording = OPERA / "datasets" / "icbhi" / "ICBHI_final_database" / "104_1b1_Al_sc_Litt3200.wav"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRAS, GOLDEN_CHECKPOINT, tmp_path / "converted", recording],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"size": 3840, "labels": 2}


PAPER_RELEASE = "m2d_vit_base-80x608p16x16p16k-250826-AS+Resp400K"


def test_the_papers_m2d_resp_release_converts_under_its_official_folder_name(tmp_path):
    # The release is encoder-only (PortableM2D's backbone state dict, saved flat): 150 ViT-Base weights + norm_stats.
    state = official_state_dict(depth=12, width=768, mlp=3072, grid=(5, 38), patch=(16, 16))
    assert len(state) == 151
    path = save_checkpoint(tmp_path, state, folder=PAPER_RELEASE, filename="checkpoint-50.pth")
    report = convert_m2d_checkpoint(path, tmp_path / "out")
    config = report.config
    assert (config.sampling_rate, config.input_size, config.patch_size) == (16000, [80, 608], [16, 16])
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
    assert (config.norm_mean, config.norm_std) == (-6.5, 4.5) and report.dropped == {}
    model = RespM2DModel.from_pretrained(tmp_path / "out")
    assert torch.equal(model.encoder.layer[11].attention.qkv.weight, state["blocks.11.attn.qkv.weight"])
    assert torch.equal(model.layernorm.bias, state["norm.bias"])
    assert f"{PAPER_RELEASE}/checkpoint-50.pth" in (tmp_path / "out" / "README.md").read_text()


def small_training_state(depth=3):
    """A small official-style training checkpoint: online blocks plus their EMA copies as target blocks."""
    state = official_state_dict(depth=depth, width=64, mlp=128, grid=(5, 38), patch=(16, 16))
    targets = {f"target_{key}": value.clone() for key, value in state.items() if key.startswith("blocks.")}
    return {**state, **targets}


def drop(state, prefix):
    return {key: value for key, value in state.items() if not key.startswith(prefix)}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: drop(s, "blocks.2."), r"2 online encoder blocks but 3 target encoder blocks"),
        (lambda s: drop(s, "blocks.1."), r"lacks blocks 1 \(found blocks \[0, 2\]\)"),
        (lambda s: drop(s, "target_blocks.1."), r"lacks target_blocks 1 "),
    ],
    ids=["last_online_block_missing", "online_gap", "target_gap"],
)
def test_checkpoints_missing_a_whole_block_are_refused(tmp_path, edit, message):
    path = save_checkpoint(tmp_path, {"model": edit(small_training_state())})
    with pytest.raises(ValueError, match=message):
        convert_m2d_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    state = small_training_state()
    state["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    state["norm.bias"][3] = float("inf")
    path = save_checkpoint(tmp_path, {"model": state})
    with pytest.raises(ValueError, match=r"NaN or Inf values in 2 tensors: norm.bias, blocks.1.attn.qkv.weight\."):
        convert_m2d_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_earlier_output_folder_is_kept_unless_overwrite_and_files_follow_the_umask(tmp_path, capsys):
    good = save_checkpoint(tmp_path, {"model": small_training_state()}, folder="m2d_vit_base-80x608p16x16p16k-a")
    output = tmp_path / "out"
    assert cli_main(["convert", str(good), str(output)]) == 0
    capsys.readouterr()
    first = (output / "model.safetensors").read_bytes()
    expected_mode = 0o666 & ~current_umask()
    modes = {path.name: path.stat().st_mode & 0o777 for path in output.iterdir()}
    assert modes["model.safetensors"] == expected_mode and set(modes.values()) == {expected_mode}

    assert cli_main(["convert", str(good), str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert "is not empty" in error and "--overwrite" in error and len(error.splitlines()) == 1

    damaged = small_training_state()
    damaged["norm.weight"][0] = float("nan")
    bad = save_checkpoint(tmp_path, {"model": damaged}, folder="m2d_vit_base-80x608p16x16p16k-b")
    assert cli_main(["convert", str(bad), str(output), "--overwrite"]) == 2
    assert (output / "model.safetensors").read_bytes() == first  # a failed conversion leaves the folder as it was

    other = save_checkpoint(
        tmp_path, {"model": small_training_state(depth=2)}, folder="m2d_vit_base-80x608p16x16p16k-c"
    )
    assert cli_main(["convert", str(other), str(output), "--overwrite"]) == 0
    assert RespM2DModel.from_pretrained(output).config.num_hidden_layers == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["out", "m2d_vit_base-80x608p16x16p16k-a", "m2d_vit_base-80x608p16x16p16k-b", "m2d_vit_base-80x608p16x16p16k-c"]
    )  # no temporary folders left behind


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_errors_for_a_file_as_output_and_a_checkpoint_that_does_not_exist(tmp_path, capsys):
    good = save_checkpoint(tmp_path, {"model": small_training_state()}, folder="m2d_vit_base-80x608p16x16p16k-a")
    existing_file = tmp_path / "out.bin"
    existing_file.write_text("keep me")
    assert cli_main(["convert", str(good), str(existing_file)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{existing_file} is a file; pass a folder" in error and len(error.splitlines()) == 1
    assert existing_file.read_text() == "keep me"

    assert cli_main(["convert", str(tmp_path / "nonexist.pth"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'nonexist.pth'} does not exist" in error and "name" not in error


@pytest.mark.parametrize("output", ["checkpoint folder", "folder above it", "current folder", "link to it"])
def test_overwrite_never_replaces_the_checkpoint_or_the_current_folder(tmp_path, monkeypatch, capsys, output):
    checkpoint = save_checkpoint(tmp_path / "runs", {"model": small_training_state()})
    (checkpoint.parent / "notes.txt").write_text("mine")
    before = {path: path.read_bytes() for path in (tmp_path / "runs").rglob("*") if path.is_file()}
    (tmp_path / "link").symlink_to(checkpoint.parent)
    targets = {
        "checkpoint folder": checkpoint.parent,
        "folder above it": tmp_path / "runs",
        "current folder": tmp_path / "elsewhere",
        "link to it": tmp_path / "link",
    }
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli_main(["convert", str(checkpoint), str(targets[output]), "--overwrite"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and ("is or holds the input" in error or "the current folder" in error)
    assert {path: path.read_bytes() for path in (tmp_path / "runs").rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in (tmp_path / "elsewhere").iterdir()) == []


def test_a_link_to_an_official_folder_takes_its_name_when_its_own_does_not_parse(tmp_path):
    checkpoint = save_checkpoint(
        tmp_path, {"model": encoder_only(golden_state_dict())}, folder="m2d_vit_base-80x608p16x16p16k"
    )
    (tmp_path / "m2d").symlink_to(checkpoint.parent)  # a short name for the official folder
    report = convert_m2d_checkpoint(tmp_path / "m2d" / checkpoint.name, tmp_path / "out")
    assert report.config.input_size == [80, 608]

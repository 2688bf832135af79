import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_without_resp_hf, tiny_config, tiny_model
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from safetensors.torch import load
from transformers import AutoModelForAudioClassification

from resp_hf import RespM2DConfig, RespM2DFeatureExtractor, RespM2DForAudioClassification
from resp_hf.cards import classifier_card, encoder_card
from resp_hf.cli import main as cli_main

REMOTE_CODE = {
    "audio_utils_resp_m2d.py",
    "configuration_resp_m2d.py",
    "feature_extraction_resp_m2d.py",
    "modeling_resp_m2d.py",
    "pipeline_resp_m2d.py",
}
MODEL_FILES = {"config.json", "model.safetensors", *REMOTE_CODE}
# Loads a downloaded repository with remote code only, and embeds a seeded clip.
REMOTE_EMBED = """
import json, torch
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained(sys.argv[1], trust_remote_code=True)
torch.manual_seed(0)
audio = 0.1 * torch.randn(16000)
with torch.no_grad():
    embedding = model(**extractor(audio.numpy(), sampling_rate=16000)).pooler_output[0]
print(json.dumps({"classes": [type(model).__name__, type(extractor).__name__], "embedding": embedding.tolist()}))
"""


@pytest.fixture
def hub(monkeypatch):
    """Intercepts repository creation and uploads (commits, folder uploads); returns the commits with their files."""
    commits = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = (
                Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
            )
        commits.append({"repo_id": repo_id, "message": commit_message, "files": files})
        url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid="0" * 40)

    def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
        root = Path(folder_path)
        files = {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}
        commits.append({"repo_id": repo_id, "message": commit_message, "files": files})
        readme = files["README.md"].decode()  # the Hub rejects a README whose front matter is not valid YAML
        assert readme.startswith("---\n") and isinstance(yaml.safe_load(readme.split("---\n")[1]), dict)
        url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid="0" * 40)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return commits


def materialize(files, folder):
    """Writes uploaded files into a folder, as a download of the repository would."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return folder


def test_model_and_feature_extractor_push_to_hub_upload_loadable_remote_code(hub, tmp_path):
    model = tiny_model(seed=4)
    extractor = RespM2DFeatureExtractor.from_model_config(model.config)
    model.push_to_hub("org/resp-m2d")
    extractor.push_to_hub("org/resp-m2d")
    assert [commit["repo_id"] for commit in hub] == ["org/resp-m2d", "org/resp-m2d"]
    model_files, extractor_files = hub[0]["files"], hub[1]["files"]
    assert set(model_files) == MODEL_FILES | {"README.md"}
    extractor_code = {"feature_extraction_resp_m2d.py", "configuration_resp_m2d.py", "audio_utils_resp_m2d.py"}
    assert set(extractor_files) == {"preprocessor_config.json", "README.md", *extractor_code}
    config = json.loads(model_files["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_resp_m2d.RespM2DModel"
    assert config["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_resp_m2d.RespM2DFeatureExtractor"
    weights = load(model_files["model.safetensors"])
    assert torch.equal(weights["embeddings.position_embeddings"], model.embeddings.position_embeddings)

    folder = materialize({**model_files, **extractor_files}, tmp_path / "download")
    remote = run_without_resp_hf(REMOTE_EMBED, folder, cwd=tmp_path)
    assert remote["classes"] == ["RespM2DModel", "RespM2DFeatureExtractor"]
    torch.manual_seed(0)
    audio = 0.1 * torch.randn(16000)
    with torch.no_grad():
        expected = model(**extractor(audio.numpy(), sampling_rate=16000)).pooler_output[0]
    torch.testing.assert_close(torch.tensor(remote["embedding"]), expected, atol=1e-6, rtol=0)


def save_fine_tuned(folder):
    torch.manual_seed(0)
    labels = {0: "healthy", 1: "copd"}
    config = tiny_config(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    config.problem_type = "single_label_classification"
    model = RespM2DForAudioClassification(config)
    model.save_pretrained(folder)
    RespM2DFeatureExtractor.from_model_config(config).save_pretrained(folder)
    card = classifier_card(
        config, "org/resp-m2d", "icbhi-copd", {"test": {"auroc": 0.91, "accuracy": 0.85}}, name=folder.name
    )
    (folder / "README.md").write_text(card)
    return model


def test_cli_push_uploads_model_extractor_code_and_card_in_one_commit(hub, tmp_path):
    folder = tmp_path / "copd-classifier"
    model = save_fine_tuned(folder)
    assert cli_main(["push", str(folder), "org/resp-m2d-copd"]) == 0
    assert len(hub) == 1
    files = hub[0]["files"]
    assert set(files) == MODEL_FILES | {"README.md", "preprocessor_config.json"}
    config = json.loads(files["config.json"])
    assert set(config["auto_map"]) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForAudioClassification",
        "AutoFeatureExtractor",
    }
    assert config["id2label"] == {"0": "healthy", "1": "copd"}
    preprocessor = json.loads(files["preprocessor_config.json"])
    assert preprocessor["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_resp_m2d.RespM2DFeatureExtractor"}
    card = files["README.md"].decode()
    assert 'pipeline("audio-classification", model="org/resp-m2d-copd", trust_remote_code=True)' in card
    assert "path/to/this/folder" not in card
    assert ModelCard(card).data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] in (0.91, 0.85)

    download = materialize(files, tmp_path / "download")
    loaded = AutoModelForAudioClassification.from_pretrained(download, trust_remote_code=True).eval()
    features = torch.randn(1, 80, 120)
    with torch.no_grad():
        assert torch.equal(loaded(features).logits, model.eval()(features).logits)


def test_push_of_a_converted_encoder_keeps_its_card(hub, golden_folder):
    assert cli_main(["push", str(golden_folder), "org/resp-m2d-golden"]) == 0
    card = hub[0]["files"]["README.md"].decode()
    assert "checkpoint-300.pth" in card and 'AutoModel.from_pretrained("org/resp-m2d-golden"' in card


def test_push_uploads_results_and_adapters_and_names_what_it_leaves_out(hub, tmp_path, caplog):
    folder = tmp_path / "lora-run"
    save_fine_tuned(folder)
    (folder / "results.json").write_text('{"test": {"auroc": 0.91}}')
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="resp_hf.hub"):
        assert cli_main(["push", str(folder), "org/lora-run"]) == 0
    files = hub[0]["files"]
    assert files["results.json"] == b'{"test": {"auroc": 0.91}}' and files["adapter/adapter_config.json"] == b"{}"
    assert not any(name.startswith("checkpoints") for name in files)
    assert f"Not uploaded from {folder}: checkpoints" in caplog.text


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "config.json").write_text('{"hidden_size": 6'), "config.json is not valid JSON"),
        (lambda folder: (folder / "config.json").write_text("[1, 2]"), "config.json holds a list, not a JSON object"),
        (
            lambda folder: (folder / "preprocessor_config.json").write_text(
                json.dumps({**json.loads((folder / "preprocessor_config.json").read_text()), "hop_length": 320})
            ),
            "disagree on the front end: hop_length=320 vs hop_length=160",
        ),
    ],
)
def test_push_of_a_damaged_folder_is_one_line_before_the_repository_exists(
    hub, tmp_path, capsys, monkeypatch, damage, message
):
    created = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: created.append(repo_id))
    folder = tmp_path / "model"
    save_fine_tuned(folder)
    damage(folder)
    assert cli_main(["push", str(folder), "org/x"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
    assert hub == [] and created == []


def test_push_of_a_folder_that_is_not_a_model_is_a_clear_error(hub, tmp_path, monkeypatch):
    created = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: created.append(repo_id))
    assert cli_main(["push", str(tmp_path), "org/x"]) == 2
    assert hub == [] and created == []  # checked before the repository is created


def test_cards_keep_local_paths_out_of_the_metadata(tmp_path):
    config = RespM2DConfig(num_labels=2, id2label={0: "a", 1: "b"}, problem_type="single_label_classification")
    (tmp_path / "my recordings").mkdir()
    results = {"test": {"auroc": 0.9}}
    card = ModelCard(classifier_card(config, str(tmp_path), str(tmp_path / "my recordings"), results))
    data = card.data.to_dict()
    # No Hub id for the base model or the dataset: left out, and results on a local dataset stay out of model-index.
    assert "base_model" not in data and "datasets" not in data and "model-index" not in data
    assert str(tmp_path) not in card.content and "| test | 0.9000 |" in card.text  # no local path, even in the text
    assert f"| base model | `{tmp_path.name}` (a local folder) |" in card.text
    assert "Fine-tuned on `my recordings` (a local folder)." in card.text
    for name in ("unknown", "./enc", "../x", "/abs/path"):
        assert "base_model" not in ModelCard(classifier_card(config, name, "org/data", results)).data.to_dict()
    data = ModelCard(classifier_card(config, "org/enc", "org/data", results)).data.to_dict()
    assert data["datasets"] == ["org/data"] and data["base_model"] == "org/enc"
    assert data["model-index"][0]["results"][0]["dataset"] == {"name": "org/data", "type": "org/data", "split": "test"}


def test_cards_find_the_hub_id_of_a_local_base_model_or_dataset(tmp_path, caplog):
    config = RespM2DConfig(num_labels=2, id2label={0: "a", 1: "b"}, problem_type="single_label_classification")
    results = {"test": {"auroc": 0.9}}

    def metadata(base_model, dataset):
        return ModelCard(classifier_card(config, str(base_model), str(dataset), results)).data.to_dict()

    snapshot = tmp_path / "hub" / "models--org--resp-m2d" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    data_snapshot = tmp_path / "hub" / "datasets--org--sounds" / "snapshots" / ("b" * 40)
    data_snapshot.mkdir(parents=True)
    data = metadata(snapshot, data_snapshot)
    assert data["base_model"] == "org/resp-m2d" and data["datasets"] == ["org/sounds"]
    assert data["model-index"][0]["results"][0]["dataset"]["name"] == "org/sounds"
    card = classifier_card(config, str(snapshot), str(data_snapshot), results)
    assert "| base model | `org/resp-m2d` |" in card and "Fine-tuned on `org/sounds`." in card

    older = tmp_path / "older"  # config.json written by an older Transformers names where it came from
    older.mkdir()
    (older / "config.json").write_text(json.dumps({"_name_or_path": "org/older-encoder"}))
    assert metadata(older, tmp_path)["base_model"] == "org/older-encoder"
    for local in ("/home/me/encoder", "encoder"):  # a path where it was saved, not a Hub id
        (older / "config.json").write_text(json.dumps({"_name_or_path": local}))
        assert "base_model" not in metadata(older, tmp_path)
    (older / "README.md").write_text("---\nbase_model: [unclosed\n---\n\nA hand-written card.\n")
    with caplog.at_level(logging.WARNING, logger="resp_hf.cards"):
        assert "base_model" not in metadata(older, tmp_path)  # a malformed card does not fail a finished run
    assert f"Ignoring the metadata of {older / 'README.md'}" in caplog.text

    downloaded = tmp_path / "downloaded"  # a folder whose card names its Hub base model
    save_fine_tuned(downloaded)
    assert ModelCard((downloaded / "README.md").read_text()).data.base_model == "org/resp-m2d"
    assert metadata(downloaded, tmp_path)["base_model"] == "org/resp-m2d"


def test_cards_have_valid_front_matter_and_required_sections():
    config = RespM2DConfig(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, problem_type="single_label_classification")
    results = {"validation": {"auroc": 0.8, "accuracy": 0.7, "loss": 0.5}, "test": {"auroc": 0.75}}
    card = ModelCard(classifier_card(config, "org/base", "my-data", results, repo_id="org/clf"))
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "audio-classification"
    assert data["license"] == "other" and "respiratory-sounds" in data["tags"]
    assert (
        data["datasets"] == ["my-data"]
        and data["metrics"] == ["roc_auc", "accuracy"]
        and data["base_model"] == "org/base"
    )
    metrics = {
        (r["dataset"]["split"], m["type"]): m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]
    }
    assert metrics == {("validation", "roc_auc"): 0.8, ("validation", "accuracy"): 0.7, ("test", "roc_auc"): 0.75}
    for section in (
        "## Intended use",
        "## How to load",
        "## Training data",
        "## Evaluation",
        "## Limitations",
        "## Citation",
    ):
        assert section in card.text
    assert "| validation | 0.7000 | 0.8000 | 0.5000 |" in card.text and "OPERA" in card.text

    encoder = ModelCard(encoder_card(RespM2DConfig(), "m2d/checkpoint.pth", "abc", repo_id="org/enc"))
    assert encoder.data.to_dict()["pipeline_tag"] == "feature-extraction"
    assert 'AutoModel.from_pretrained("org/enc", trust_remote_code=True)' in encoder.text
    assert "Not a medical device" in encoder.text

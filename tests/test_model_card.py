"""README.md, the model card every run writes (single-label, multi-label, regression, no evaluation during training,
resumed), and --push_to_hub, tested at the huggingface_hub boundary: create_repo/upload_folder replaced by fakes,
nothing reaches the network. Refusals (offline, no token) come before any work and leave --output_dir alone."""

import shlex
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModelForSequenceClassification, pipeline

import train
import training.model_card as model_card
from conftest import read_outputs, run_train
from metrics import task_for

TOKEN = "hf_notARealTokenButKeepItSecret"
COMMON = ["--model_name_or_path", None, "--num_train_epochs", 1, "--max_length", 32, "--learning_rate", 1e-3]
TEXTS = ["a fine film", "dull and long", "loved it", "awful acting", "great cast", "boring plot", "moving story",
         "far too long"]
KIND_TAGS = {"single": "single-label", "multi": "multi-label", "regression": "regression"}


class FakeHub:
    """create_repo and upload_folder as train.py's push calls them: the calls kept, the card as uploaded."""

    def __init__(self):
        self.calls, self.fail = [], False

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", repo_id, options))
        return types.SimpleNamespace(repo_id=f"someone/{repo_id}")

    def upload_folder(self, **options):
        self.calls.append(("upload_folder", options, (Path(options["folder_path"]) / "README.md").read_text()))
        if self.fail:
            raise ConnectionError("connection refused")


def data_folders(root: Path) -> dict:
    """Multi-label (a list of label names per row) and regression on sentence pairs, 8 rows each."""
    labels = [["joy"], ["anger"], ["joy", "love"], ["anger"], ["joy"], [], ["love"], ["anger", "joy"]]
    frames = {"multi": pd.DataFrame({"text": TEXTS, "labels": labels}),
              "regression": pd.DataFrame({"sentence1": TEXTS, "sentence2": TEXTS[::-1],
                                          "label": [0.5, 1.0, 4.2, 3.0, 2.5, 0.0, 5.0, 1.5]})}
    for kind, frame in frames.items():
        (root / kind).mkdir()
        for split in ("train", "test"):
            frame.to_parquet(root / kind / f"{split}.parquet")
    return {kind: root / kind for kind in frames}


@pytest.fixture(scope="module")
def runs(tiny_bert, small_imdb, tmp_path_factory):
    """Each kind trained once, in this process: single-label as `python train.py ...` (sys.argv), with checkpoints,
    pushed with --hub_token; multi-label called from Python (the card rebuilds the command), pushed with the saved
    token to a Hub that fails; regression without evaluation during training; and single-label resumed from its last
    checkpoint into another folder."""
    out, hub = tmp_path_factory.mktemp("cards"), FakeHub()
    data = data_folders(tmp_path_factory.mktemp("card_data"))
    common = [tiny_bert if arg is None else arg for arg in COMMON]
    single = [*common, "--dataset_name", small_imdb, "--train_samples", 16, "--eval_samples", 16,
              "--checkpointing_steps", 2, "--output_dir", out / "single"]
    multi = [*common, "--dataset_name", data["multi"], "--train_samples", 0, "--eval_samples", 0,
             "--ignore_mismatched_sizes", "--output_dir", out / "multi"]
    regression = [*common, "--dataset_name", data["regression"], "--train_samples", 0, "--eval_samples", 0,
                  "--problem_type", "regression", "--ignore_mismatched_sizes", "--eval_strategy", "no",
                  "--output_dir", out / "regression"]
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_card, "constants", types.SimpleNamespace(HF_HUB_OFFLINE=False))  # for the push only
        patch.setattr(model_card, "create_repo", hub.create_repo)
        patch.setattr(model_card, "upload_folder", hub.upload_folder)
        patch.setattr(model_card, "get_token", lambda: "hf_saved_by_login")
        single_args = [str(arg) for arg in [*single, "--push_to_hub", "--hub_token", TOKEN]]
        patch.setattr(sys, "argv", ["train.py", *single_args])
        results["single"] = run_train(single_args)
        patch.setattr(sys, "argv", ["pytest"])  # train.main called from Python
        hub.fail = True
        results["multi"] = run_train([*multi, "--push_to_hub", "--hub_model_id", "my-labels"], check=False)
        results["regression"] = run_train(regression)
        resumed = [*single[:-1], out / "resumed", "--resume_from_checkpoint", out / "single" / "checkpoints" / "step_2"]
        results["resumed"] = run_train(resumed)
    return types.SimpleNamespace(out=out, hub=hub, results=results, single_args=single_args)


def front_matter(folder: Path) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("kind", ["single", "multi", "regression"])
def test_the_card_yaml_holds_the_hub_fields_and_the_final_metrics(kind, runs):
    folder = runs.out / kind
    metrics, _ = read_outputs(folder)
    task = task_for(metrics["config"]["problem_type"])
    meta = front_matter(folder)
    assert (meta["pipeline_tag"], meta["library_name"]) == ("text-classification", "transformers")
    assert KIND_TAGS[kind] in meta["tags"]
    # Local paths: the Hub refuses them as base_model / datasets; tiny_bert has no card stating a license.
    assert not {"base_model", "datasets", "license"} & set(meta)
    (index,) = meta["model-index"]
    (result,) = index["results"]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"name": metrics["config"]["dataset_name"],
                                 "type": Path(metrics["config"]["dataset_name"]).name}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {m: metrics["after"][m] for m in task.metrics}
    assert [m["name"] for m in result["metrics"]] == [task.titles[m] for m in task.metrics]
    card = ModelCard.load(folder / "README.md")  # what the Hub's own parser makes of it
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        m: metrics["after"][m] for m in task.metrics}


@pytest.mark.parametrize("kind", ["single", "multi", "regression"])
def test_the_card_body_has_the_before_and_after_figures_labels_and_settings(kind, runs):
    folder = runs.out / kind
    metrics, _ = read_outputs(folder)
    task, text = task_for(metrics["config"]["problem_type"]), (folder / "README.md").read_text()
    for metric in task.metrics:
        assert f"| {task.titles[metric]} | {metrics['before'][metric]:.4f} | {metrics['after'][metric]:.4f} |" in text
    assert f"| {metrics['before']['loss']:.4f} | {metrics['after']['loss']:.4f} |" in text
    assert {"single": "2 classes (id: name): 0: neg, 1: pos.", "regression": "one score per row (`label`).",
            "multi": "3 labels, any number per row, each predicted at probability >= 0.5: anger, joy, love."}[kind] in text
    assert "| learning rate | 0.001, linear schedule, 0 warmup steps |" in text
    assert "| precision | fp32 |" in text
    if kind == "regression":
        assert "No evaluation during training; the saved model is the last step's." in text
        assert '{"text": "A wonderful film.", "text_pair": "A great movie."}' in text  # a pair model's input
    else:
        best = metrics["best"]
        assert (f"Best evaluation during training: {task.titles[best['metric']]} {best['value']:.4f} at step "
                f"{best['step']} (epoch 1), the saved model.") in text


def test_the_command_is_the_one_run_with_the_token_hidden(runs):
    text = (runs.out / "single" / "README.md").read_text()
    shown = ["<hub_token>" if arg == TOKEN else arg for arg in runs.single_args]
    assert f"```bash\n{shlex.join(['python', 'train.py', *shown])}\n```" in text
    for path in (runs.out / "single").rglob("*"):  # not in metrics.json's config, the card, a checkpoint, a log
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    assert read_outputs(runs.out / "single")[0]["config"]["hub_token"] == "<hub_token>"


def test_called_from_python_the_card_rebuilds_the_command_from_the_flags(runs):
    text = (runs.out / "multi" / "README.md").read_text()
    command = text.split("```bash\n")[1].split("\n```")[0]
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"] and "--push_to_hub" in words
    again = train.parse_args(words[2:])  # the command runs the same configuration
    recorded = read_outputs(runs.out / "multi")[0]["config"]
    assert (again.dataset_name, again.learning_rate, again.max_length, again.hub_model_id, again.train_samples) == (
        recorded["dataset_name"], 1e-3, 32, "my-labels", 0)


def test_under_accelerate_launch_the_command_names_the_launcher_and_its_processes(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/home/me/repo/train.py", "--hub_token=hf_x", "--seed", "1", "--hub_token", "y"])
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what `accelerate launch` sets for its processes
    assert model_card.command_line(train.parse_args([]), num_processes=2) == (
        "accelerate launch --num_processes 2 train.py '--hub_token=<hub_token>' --seed 1 --hub_token '<hub_token>'")


def test_a_resumed_run_rewrites_the_card_and_says_so(runs):
    text = (runs.out / "resumed" / "README.md").read_text()
    assert f"Resumed from a checkpoint (`--resume_from_checkpoint {runs.out}/single/checkpoints/step_2`)" in text
    metrics, _ = read_outputs(runs.out / "resumed")
    assert front_matter(runs.out / "resumed")["model-index"][0]["results"][0]["metrics"][0]["value"] == (
        metrics["after"]["accuracy"])


@pytest.mark.parametrize("kind", ["single", "multi", "regression"])
def test_pipeline_still_loads_the_folder(kind, runs):
    folder = str(runs.out / kind)
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.problem_type
    classify = pipeline("text-classification", model=folder)
    answer = classify({"text": "a fine film", "text_pair": "dull"} if kind == "regression" else "a fine film")
    assert "score" in (answer[0] if isinstance(answer, list) else answer)


def test_push_uploads_the_folder_without_checkpoints_and_the_card_names_the_repo(runs):
    folder = runs.out / "single"
    create, upload = runs.hub.calls[:2]  # the repository made once, before training; the upload at the end
    assert create == ("create_repo", "single", {"exist_ok": True, "token": TOKEN})
    assert upload[0] == "upload_folder"
    _, options, uploaded_card = upload
    assert options == {"repo_id": "someone/single", "folder_path": folder, "ignore_patterns": list(
        model_card.PUSH_IGNORE), "token": TOKEN, "commit_message": "End of training"}
    files = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    assert any(f.startswith("checkpoints/") for f in files)
    sent = set(filter_repo_objects(files, ignore_patterns=options["ignore_patterns"]))
    assert {"README.md", "config.json", "model.safetensors", "metrics.json", "tokenizer.json"} <= sent
    assert not any(f.startswith("checkpoints/") for f in sent)
    assert 'pipeline("text-classification", model="someone/single")' in uploaded_card
    assert uploaded_card == (folder / "README.md").read_text()
    assert "Pushed" in runs.results["single"].stderr


def test_a_failed_upload_keeps_the_run_and_says_how_to_retry(runs):
    result, folder = runs.results["multi"], runs.out / "multi"
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the upload to the Hub failed (connection refused); the run is complete in {folder}; retry with: "
        f"hf upload someone/my-labels {folder} . --exclude 'checkpoints/*' --exclude 'best/*' --exclude 'profile_*'")
    assert [call[0] for call in runs.hub.calls[2:]] == ["create_repo", "upload_folder"]  # one creation a run
    assert runs.hub.calls[2][2]["token"] is None  # the token `hf auth login` saved: huggingface_hub finds it
    for name in ("model.safetensors", "config.json", "metrics.json", "eval_predictions.jsonl", "README.md"):
        assert (folder / name).is_file()


def test_hub_names_are_linked_and_a_license_comes_from_the_base_models_card(runs, tmp_path):
    metrics, _ = read_outputs(runs.out / "single")
    record = metrics["config"] | {"model_name_or_path": "google-bert/bert-base-cased", "dataset_name": "nyu-mll/glue",
                                  "dataset_config_name": "mrpc"}
    data = model_card.card_data(record, task_for(record["problem_type"]), metrics["after"], "mrpc-bert").to_dict()
    assert (data["base_model"], data["datasets"]) == ("google-bert/bert-base-cased", ["nyu-mll/glue"])
    assert data["model-index"][0]["results"][0]["dataset"] == {"name": "nyu-mll/glue mrpc", "type": "nyu-mll/glue",
                                                               "config": "mrpc"}
    regression = task_for("regression")
    after = {"pearson": float("nan"), "spearman": float("nan"), "mse": 1.5, "mae": 1.0}  # a constant prediction
    data = model_card.card_data(record, regression, after, "flat").to_dict()
    assert [m["type"] for m in data["model-index"][0]["results"][0]["metrics"]] == ["mse", "mae"]  # NaN: no number
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a base model\n")
    assert model_card.base_model_license(str(base)) == "apache-2.0"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("offline, token, flags, message", [
    (True, "hf_saved", [], "--push_to_hub needs the Hub, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: unset "
                           "it, or train without --push_to_hub and upload later with `hf upload`"),
    (False, None, [], "--push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass "
                      "--hub_token"),
    (False, "hf_saved", ["--hub_model_id", "a/b/c"], "--hub_model_id a/b/c: not a Hub repository name (NAME or "
                                                     "NAMESPACE/NAME: letters, digits, '-', '_', '.'; at most 96)"),
])
def test_push_refusals_are_one_line_before_any_work(offline, token, flags, message, tiny_bert, tmp_path, monkeypatch):
    out = tmp_path / "previous run"  # (a name the Hub would refuse: --hub_model_id or the check says so)
    out.mkdir()
    (out / "metrics.json").write_text('{"after": {"accuracy": 0.9}}\n')
    before = snapshot(out)
    monkeypatch.setattr(model_card, "constants", types.SimpleNamespace(HF_HUB_OFFLINE=offline))
    monkeypatch.setattr(model_card, "get_token", lambda: token)
    result = run_train(["--model_name_or_path", tiny_bert, "--dataset_name", tmp_path / "never read", "--output_dir",
                        out, "--overwrite_output_dir", "--push_to_hub", *flags], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"train.py: error: {message} (python train.py --help lists the flags)"
    assert snapshot(out) == before


def test_an_output_dir_name_the_hub_refuses_needs_hub_model_id(tmp_path, monkeypatch):
    monkeypatch.setattr(model_card, "constants", types.SimpleNamespace(HF_HUB_OFFLINE=False))
    monkeypatch.setattr(model_card, "get_token", lambda: "hf_saved")
    result = run_train(["--output_dir", tmp_path / "my run", "--push_to_hub"], check=False)
    assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (2, (
        f"train.py: error: --push_to_hub: --output_dir's name 'my run' is {model_card.REPO_NAME}; pass --hub_model_id "
        "(python train.py --help lists the flags)"))
    assert not (tmp_path / "my run").exists()


def test_the_token_leaves_the_command_line_once_parsed(monkeypatch):
    """Trackers (W&B) record sys.argv: after parsing it holds a placeholder, not --hub_token's value."""
    import train

    monkeypatch.setattr(sys, "argv", ["train.py", "--hub_token", "hf_secret", "--hub_token=hf_other", "--seed", "3"])
    config = train.parse_args()
    assert config.hub_token == "hf_other" and config.seed == 3
    assert sys.argv == ["train.py", "--hub_token", "<hub_token>", "--hub_token=<hub_token>", "--seed", "3"]


def test_a_repository_that_cannot_be_created_stops_the_run_before_any_work(tiny_bert, small_imdb, tmp_path,
                                                                            monkeypatch):
    """A read-only token or another's namespace: create_repo fails at the start (as the Trainer's does), one line,
    nothing trained or written; not after the training."""
    def refused(repo_id, **options):
        raise PermissionError("403 Forbidden: You don't have the rights to create a model under the namespace 'org'")

    monkeypatch.setattr(model_card, "constants", types.SimpleNamespace(HF_HUB_OFFLINE=False))
    monkeypatch.setattr(model_card, "get_token", lambda: "hf_read_only")
    monkeypatch.setattr(model_card, "create_repo", refused)
    out = tmp_path / "out"
    result = run_train([*[tiny_bert if arg is None else arg for arg in COMMON], "--dataset_name", small_imdb,
                        "--output_dir", out, "--push_to_hub", "--hub_model_id", "org/model"], check=False)
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --push_to_hub: cannot create the Hub repository org/model (403 Forbidden: You don't have the rights "
        "to create a model under the namespace 'org'); check that the token may write there (`hf auth whoami`) and "
        "--hub_model_id's namespace")
    assert "Before training" not in result.stdout

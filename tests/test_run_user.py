"""prunekit run on your own model and data: end-to-end runs with tiny models, the dry run,
prunekit init / report, report.html, and the errors found before any training."""

from __future__ import annotations

import base64
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from prunekit.errors import ConfigError, DataError
from prunekit.run import load_recipe, parse_recipe, run
from prunekit.run.cli import main
from prunekit.run.dry_run import dry_run
from prunekit.run.init import INIT_SOURCES, INIT_TASKS, init_recipe
from prunekit.run.recipe import Recipe

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    def mlp(classes=3):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                             nn.Linear(32, classes))

    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(256, 16)
            self.hidden = nn.Linear(16, 32)
            self.out = nn.Linear(32, 256)

        def forward(self, ids):
            return self.out(torch.relu(self.hidden(self.embed(ids))))

    def lm():
        return TinyLM()
""")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with an importable module of tiny nets, labelled arrays and a text file."""
    (tmp_path / "tiny_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)  # 3 classes
    np.savez(tmp_path / "train.npz", x=x[:64], y=y[:64])
    np.savez(tmp_path / "test.npz", x=x[64:], y=y[64:])
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 12)
    return tmp_path


def _recipe(workspace: Path, **sections) -> dict:
    base = {
        "name": "mine",
        "model": {"python": "tiny_nets:mlp"},
        "data": {"kind": "arrays", "train": str(workspace / "train.npz"),
                 "test": str(workspace / "test.npz"), "batch_size": 16},
        "prune": {"granularity": "channel", "ratio": 0.5},
        "finetune": {"epochs": 2, "lr": 0.05},
        "measure": {"latency_runs": 2, "batch_sizes": [1]},
    }
    base.update(sections)
    return base


def test_classification_run_with_channels(workspace: Path) -> None:
    recipe = parse_recipe(_recipe(workspace))
    result = run(recipe, out_dir=workspace / "out", quiet=True)
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["params"] < dense["params"] and pruned["macs"] < dense["macs"]
    assert 0.0 <= pruned["accuracy"] <= 1.0 and "confusion_matrix" in pruned
    assert pruned["agreement"] <= 1.0 and dense["agreement"] == 1.0
    (cut,) = result.metrics["run"]["cuts"]  # the one pipeline's structured-cut record
    assert cut["verify"]["ok"] and cut["groups_cut"] == 2
    assert result.metrics["run"]["finetune"].startswith("2 epochs")
    assert result.model[-1].out_features == 3  # the head kept its classes
    out = workspace / "out"
    for name in ("recipe.yaml", "dense.safetensors", "pruned.safetensors", "plan.json",
                 "sparsity.png", "schedule.png", "report.md", "report.html", "metrics.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["pruned"]["params"] == pruned["params"]
    again = load_recipe(out / "recipe.yaml")  # the resolved recipe reads back
    assert again.model.python == "tiny_nets:mlp" and again.data.spec() == recipe.data.spec()


def test_report_html_embeds_every_chart(workspace: Path) -> None:
    run(parse_recipe(_recipe(workspace, finetune={"epochs": 0, "lr": 0.1})),
        out_dir=workspace / "out", quiet=True)
    page = (workspace / "out" / "report.html").read_text()
    charts = sorted((workspace / "out").glob("*.png"))
    assert charts
    for png in charts:
        assert base64.b64encode(png.read_bytes()).decode() in page
    assert "<table>" in page and "agreement with dense top-1" in page
    assert "src='http" not in page and "href=" not in page  # self-contained


def test_language_modelling_run_with_masks(workspace: Path) -> None:
    recipe = parse_recipe(_recipe(
        workspace, task="language-modelling", model={"python": "tiny_nets:lm"},
        data={"kind": "text", "test": str(workspace / "text.txt"), "seq_len": 16,
              "tokenizer": "bytes"},
        prune={"sparsity": 0.5}, finetune={"epochs": 1, "lr": 0.1}))
    result = run(recipe, out_dir=workspace / "lm", quiet=True)
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert dense["perplexity"] > 1 and pruned["perplexity"] > 1 and dense["tokens"] > 0
    assert result.metrics["run"]["finetune"] == "none (the data has no training split)"
    assert not (workspace / "lm" / "plan.json").exists()


def test_dry_run_says_what_would_be_cut(workspace: Path) -> None:
    text = dry_run(parse_recipe(_recipe(workspace)), quiet=True)
    assert "recipe mine: valid" in text and "groups cut: 2" in text
    assert "params: 1,379 -> 435 (-68.5%)" in text and "verified: yes" in text  # 16 of 32 kept
    assert "heads kept whole: 4" in text and "nothing trained or written" in text
    assert not (workspace / "runs").exists()


@pytest.mark.slow  # loads digits and traces LeNet-5: 6 s
def test_dry_run_of_a_reference_recipe() -> None:
    recipe = parse_recipe({"prune": {"granularity": "channel", "ratio": 0.5},
                           "model": {"name": "lenet5"}, "data": {"test_samples": 16}})
    text = dry_run(recipe, quiet=True)
    assert "model: lenet5" in text and "heads kept whole: fc" in text and "MACs:" in text


def test_errors_before_any_training(workspace: Path) -> None:
    with pytest.raises(DataError, match="3 classes but the model's head has 5 outputs"):
        run(parse_recipe(_recipe(workspace, model={"python": "tiny_nets:mlp",
                                                   "kwargs": {"classes": 5}})),
            out_dir=workspace / "x", quiet=True)
    with pytest.raises(DataError, match="needs labels"):
        run(parse_recipe(_recipe(workspace, data={"kind": "arrays", "test": {
            "inputs": _npy(workspace)}})), out_dir=workspace / "x", quiet=True)
    with pytest.raises(DataError, match="does not exist"):
        run(parse_recipe(_recipe(workspace, data={"kind": "arrays", "test": "nope.npz"})),
            out_dir=workspace / "x", quiet=True)
    assert not (workspace / "x").exists()


def _npy(workspace: Path) -> str:
    np.save(workspace / "inputs.npy", np.zeros((4, 6), dtype=np.float32))
    return str(workspace / "inputs.npy")


@pytest.mark.parametrize("source", INIT_SOURCES)
@pytest.mark.parametrize("task", INIT_TASKS)
def test_init_recipes_are_valid_as_written(source: str, task: str) -> None:
    recipe = parse_recipe(yaml.safe_load(init_recipe(source=source, task=task)))
    assert recipe.task == task and recipe.own


def test_cli_init_report_and_errors(workspace: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workspace)
    assert main(["init", "--source", "timm", "--task", "agreement", "--out", "r.yaml"]) == 0
    assert load_recipe("r.yaml").model.source == "timm"
    assert main(["init", "--out", "r.yaml"]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    (workspace / "mine.yaml").write_text(yaml.safe_dump(_recipe(workspace, finetune={
        "epochs": 0, "lr": 0.1})))
    assert main(["run", "mine.yaml", "--dry-run", "--quiet"]) == 0
    assert "groups cut: 2" in capsys.readouterr().out
    assert main(["run", "mine.yaml", "--out", "o", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    (workspace / "o" / "report.html").unlink()
    assert main(["report", "o", "--no-open"]) == 0
    assert (workspace / "o" / "report.html").is_file()
    assert main(["report", "missing", "--no-open"]) == 2
    assert main(["run", "mine.yaml", "--data-dir", "no/such/dir"]) == 2
    assert "--data-dir no/such/dir does not exist" in capsys.readouterr().err


def test_every_recipe_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_recipe({"prune": {"sparsty": 0.5}, "finetune": {"lr": -1}})
    assert "2 problems: (1) unknown key 'prune.sparsty'" in str(err.value)
    assert "(2) finetune.lr" in str(err.value)


def test_cli_help_has_no_doubled_percent(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "90% sparsity" in out and "%%" not in out


def test_structured_charts_plot_what_was_removed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from prunekit.run import report
    from prunekit.run.pipeline import removed_rows

    dense = [{"name": "a.weight", "params": 100, "nonzero_params": 100, "sparsity": 0.0},
             {"name": "b.weight", "params": 50, "nonzero_params": 50, "sparsity": 0.0}]
    pruned = [{"name": "a.weight", "params": 40, "nonzero_params": 40, "sparsity": 0.0}]
    rows = removed_rows(pruned, dense)
    assert [r["removed"] for r in rows] == [0.6, 1.0]  # b removed whole
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    schedule = {"curve": {"name": "oneshot", "final": 0.5, "at": 0}, "unit": "step",
                "steps": 10, "quantity": "params removed", "measured": [[0, 0.62]]}
    report.plot_schedule(schedule, tmp_path / "s.png")
    (fig,) = figures
    labels = [a.get_ylabel() for a in fig.axes]
    assert labels == ["scheduled amount (%)", "measured params removed (%)"]  # two axes
    report.plot_schedule({**schedule, "quantity": "sparsity"}, tmp_path / "t.png")
    assert [a.get_ylabel() for a in figures[1].axes] == ["sparsity (%)"]


@pytest.mark.slow  # imports transformers and datasets: 5 s on a quiet machine, 25 s shared
def test_embeddings_run_on_a_hugging_face_folder(tmp_path: Path) -> None:
    """The MiniLM path with a tiny BERT: a save_pretrained folder, its tokenizer reading a
    saved datasets folder, cosine to the dense embeddings."""
    datasets = pytest.importorskip("datasets", reason="pip install datasets")
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very", "a"]
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=40)
    transformers.BertModel(config).save_pretrained(str(folder))
    texts = {"text": ["good film", "a very bad film", "very good", "bad"] * 3}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(texts)}).save_to_disk(
        str(tmp_path / "ds"))
    recipe = parse_recipe({
        "name": "emb", "task": "embeddings",
        "model": {"source": "transformers", "path": str(folder)},
        "data": {"kind": "hf-dataset", "path": str(tmp_path / "ds"), "eval_batch_size": 4},
        "prune": {"sparsity": 0.5, "scope": "layer"}, "finetune": {"epochs": 0, "lr": 0.1},
        "measure": {"latency_runs": 2, "batch_sizes": [1]}})
    result = run(recipe, out_dir=tmp_path / "out", quiet=True)
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert dense["cosine_mean"] == pytest.approx(1.0) and pruned["examples"] == 12
    assert -1.0 <= pruned["cosine_min"] <= pruned["cosine_mean"] < 1.0
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_agreement_run_on_an_image_folder(workspace: Path) -> None:
    """Unlabelled use of labelled images: a conv net from a factory, agreement only."""
    from PIL import Image

    (workspace / "conv_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def convnet():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(16, 5))
    """))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            (workspace / "imgs" / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    workspace / "imgs" / split / name / f"{i}.png")
    recipe = parse_recipe(_recipe(
        workspace, task="agreement", model={"python": "conv_nets:convnet"},
        data={"kind": "image-folder", "root": str(workspace / "imgs")},
        prune={"granularity": "channel", "ratio": 0.25}))
    result = run(recipe, out_dir=workspace / "out", quiet=True)
    pruned = result.metrics["pruned"]
    assert 0.0 <= pruned["agreement"] <= pruned["top5_agreement"] <= 1.0
    assert pruned["examples"] == 6 and pruned["params"] < result.metrics["dense"]["params"]
    # no labels: fine-tuning learns the dense model's outputs (KL, as the task measures)
    assert result.metrics["run"]["finetune"].endswith("on the dense model's outputs")


@pytest.mark.slow  # imports transformers and datasets
def test_text_classification_fine_tunes_with_keyword_inputs(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="pip install datasets")
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=40, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(str(folder))
    texts = {"text": ["good film", "very bad film", "very good", "bad"] * 4,
             "label": [1, 0, 1, 0] * 4}
    split = datasets.Dataset.from_dict(texts)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "ds"))
    recipe = parse_recipe({
        "name": "cls", "model": {"source": "transformers", "path": str(folder),
                                 "auto": "sequence-classification"},
        "data": {"kind": "hf-dataset", "path": str(tmp_path / "ds"), "batch_size": 4},
        "prune": {"sparsity": 0.5, "scope": "layer"}, "finetune": {"epochs": 2, "lr": 0.05},
        "measure": {"latency_runs": 2, "batch_sizes": [1]}})
    result = run(recipe, out_dir=tmp_path / "out", quiet=True)
    assert result.metrics["run"]["finetune"].startswith("2 epochs")
    pruned = result.metrics["pruned"]
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01) and 0 <= pruned["accuracy"] <= 1


def test_given_input_shape_makes_the_example_inputs(workspace: Path) -> None:
    recipe = parse_recipe(_recipe(workspace, model={"python": "tiny_nets:mlp",
                                                    "input_shape": [6]}))
    from prunekit.run.prepare import prepare

    prepared = prepare(recipe, quiet=True)
    assert prepared.example.shape == (2, 6)
    test = prepared.data.loader("test", train=False)
    assert not torch.equal(prepared.example, next(iter(test))[0][:2])
    assert "groups cut: 2" in dry_run(recipe, quiet=True)


def test_render_html_of_any_run_folder(tmp_path: Path) -> None:
    """report.html of a reference run's folder: its metrics table and every chart,
    the sweep points' charts too; a folder that is not a finished run is refused."""
    from prunekit.run.html import render_html

    metrics = {"dense": {"accuracy": 0.95, "params": 1000, "macs": 500},
               "pruned": {"accuracy": 0.93, "params": 400, "macs": 210}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "report.md").write_text("# quickstart\n<b>not html</b>\n")
    (tmp_path / "points" / "01_sparsity-0.5").mkdir(parents=True)
    charts = [tmp_path / "sparsity.png", tmp_path / "points" / "01_sparsity-0.5" / "s.png"]
    for i, png in enumerate(charts):
        png.write_bytes(b"\x89PNG fake chart %d" % i)
    page = render_html(tmp_path).read_text()
    for png in charts:
        assert base64.b64encode(png.read_bytes()).decode() in page
    assert "points/01_sparsity-0.5/s.png" in page and "95.00%" in page and "93.00%" in page
    assert "&lt;b&gt;not html&lt;/b&gt;" in page  # the Markdown is shown, escaped
    with pytest.raises(ConfigError, match="not a finished prunekit run"):
        render_html(tmp_path / "points")


# --- every schedule, sweep and repair through the one pipeline -----------------------------


def _masks(workspace: Path, **sections) -> dict:
    """An own-model recipe that masks 80% of the weights (output layer kept whole)."""
    return _recipe(workspace, prune={"sparsity": 0.8, "protect_output": True}, **sections)


def _prunable_sparsity(result) -> float:
    """Zeros over the weights of every layer but the output layer (protect_output)."""
    rows = result.layers[:-1]
    return sum(r["params"] - r["nonzero_params"] for r in rows) / sum(r["params"] for r in rows)


@pytest.mark.parametrize("schedule, sections", [
    ({"kind": "gradual", "end": 2, "frequency": 1}, {}),
    ({"kind": "iterative", "rounds": 3}, {"finetune": {"epochs": 1, "lr": 0.05}}),
    ({"kind": "surgery"}, {}),
    ({"kind": "lottery", "rate": 0.5, "rewind": 2}, {"train": {"epochs": 2, "lr": 0.05}}),
])
def test_own_model_runs_every_schedule(workspace: Path, schedule: dict, sections: dict) -> None:
    result = run(parse_recipe(_masks(workspace, schedule=schedule, **sections)),
                 out_dir=workspace / "out", quiet=True)
    details, pruned = result.metrics["run"], result.metrics["pruned"]
    assert _prunable_sparsity(result) == pytest.approx(0.8, abs=0.01)
    assert result.model[-1].weight.count_nonzero() == result.model[-1].weight.numel()
    assert 0.0 <= pruned["accuracy"] <= 1.0 and 0.0 <= pruned["agreement"] <= 1.0
    assert details["task"] == "classification" and details["schedule"]["measured"]
    if schedule["kind"] in ("iterative", "lottery"):
        rounds = details["rounds"]
        assert [r["round"] for r in rounds] == list(range(len(rounds))) and len(rounds) >= 3
        assert rounds[-1]["target"] == pytest.approx(0.8)
    for name in ("dense.safetensors", "pruned.safetensors", "schedule.png", "report.md",
                 "metrics.json"):
        assert (workspace / "out" / name).is_file(), name
    assert f"schedule: {schedule['kind']}" in (workspace / "out" / "report.md").read_text()


def test_own_model_sweep_writes_every_point(workspace: Path) -> None:
    recipe = parse_recipe(_recipe(workspace, prune={"granularity": "channel"},
                                  sweep={"ratio": [0.25, 0.5]}))
    result = run(recipe, out_dir=workspace / "out", quiet=True)
    points = result.metrics["points"]
    assert [p["setting"] for p in points] == [{"ratio": 0.25}, {"ratio": 0.5}]
    params = [p["pruned"]["params"] for p in points]
    assert params[0] > params[1] == result.metrics["pruned"]["params"]
    for p in points:
        assert (workspace / "out" / p["folder"] / "metrics.json").is_file()
        assert all(c["verify"]["ok"] for c in p["run"]["cuts"])
    assert (workspace / "out" / "accuracy_vs_sparsity.png").is_file()


def test_language_model_prunes_gradually_on_next_token_loss(workspace: Path) -> None:
    text = str(workspace / "text.txt")
    recipe = parse_recipe(_recipe(
        workspace, task="language-modelling", model={"python": "tiny_nets:lm"},
        data={"kind": "text", "train": text, "test": text, "seq_len": 16,
              "tokenizer": "bytes", "batch_size": 8},
        prune={"sparsity": 0.6}, schedule={"kind": "gradual", "end": 2, "frequency": 1},
        finetune={"epochs": 3, "lr": 0.5}))
    result = run(recipe, out_dir=workspace / "lm", quiet=True)
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert pruned["sparsity"] == pytest.approx(0.6, abs=0.01)
    # the repeated sentence is learnt: next-token fine-tuning beats the untrained dense model
    assert 1.0 < pruned["perplexity"] < dense["perplexity"] < 1000
    report = (workspace / "lm" / "report.md").read_text()
    assert "perplexity" in report and "accuracy" not in report.split("## Schedule")[0]


def test_agreement_without_labels_iterates_with_bn_recalibration(workspace: Path) -> None:
    x = np.random.default_rng(1).normal(size=(48, 6)).astype(np.float32)
    np.save(workspace / "x.npy", x)
    (workspace / "bn_nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def mlp():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Linear(32, 4))
    """))
    recipe = parse_recipe(_recipe(
        workspace, task="agreement", model={"python": "bn_nets:mlp"},
        data={"kind": "arrays", "train": {"inputs": str(workspace / "x.npy")},
              "test": {"inputs": str(workspace / "x.npy")}, "batch_size": 16},
        prune={"sparsity": 0.5}, schedule={"kind": "iterative", "rounds": 2},
        recovery={"bn_recalibration": {"batches": 2}}, finetune={"epochs": 1, "lr": 0.05}))
    result = run(recipe, out_dir=workspace / "out", quiet=True)
    pruned, details = result.metrics["pruned"], result.metrics["run"]
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert 0.0 <= pruned["agreement"] <= 1.0 and pruned["kl"] >= 0.0
    assert [r["bn_recalibration"]["layers"] for r in details["recovery"]] == [1, 1]
    assert len(details["rounds"]) == 3


@pytest.mark.parametrize("sections, key", [
    ({"task": "agreement", "train": {"epochs": 2}}, "train.epochs"),
    ({"task": "agreement", "recovery": {"distill": {}}}, "recovery.distill"),
    ({"task": "language-modelling", "schedule": {"kind": "iterative", "floor": 0.5},
      "data": {"kind": "text", "test": "t.txt", "val_fraction": 0.1}}, "schedule.floor"),
    ({"schedule": {"kind": "gradual", "end": 5}}, "schedule.end"),
])
def test_own_recipes_refuse_what_cannot_work(workspace: Path, sections: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_recipe(_masks(workspace, **sections))


def test_a_schedule_that_trains_needs_a_training_split(workspace: Path) -> None:
    recipe = parse_recipe(_masks(workspace, data={"kind": "arrays", "test": str(
        workspace / "test.npz")}, schedule={"kind": "gradual", "end": 1}))
    with pytest.raises(ConfigError, match="schedule.kind gradual prunes while training"):
        run(recipe, out_dir=workspace / "x", quiet=True)
    assert not (workspace / "x").exists()


def _ddp_worker(rank: int, world: int, folder: str, recipe: dict) -> None:
    import sys

    import torch.distributed as dist

    sys.path.insert(0, folder)  # tiny_nets, as the workspace fixture makes it importable
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                            world_size=world)
    try:
        result = run(parse_recipe(recipe), out_dir=Path(folder) / "out", quiet=True)
        torch.save({"state": result.model.state_dict(), "out": str(result.out_dir),
                    "metrics": result.metrics}, f"{folder}/rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def test_torchrun_trains_an_own_model_with_ddp_and_rank_zero_writes(workspace: Path) -> None:
    """Two gloo processes, as torchrun starts them: fine-tuning under a gradual schedule runs
    as DistributedDataParallel, both ranks end with the same pruned weights, and only rank 0
    writes the output folder."""
    from tests.gloo import spawn_ranks

    recipe = _masks(workspace, schedule={"kind": "gradual", "end": 2, "frequency": 1})
    spawn_ranks(_ddp_worker, (2, str(workspace), recipe),
                [workspace / f"rank{r}.pt" for r in range(2)])
    ranks = [torch.load(workspace / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["out"] == str(workspace / "out") != ranks[1]["out"]
    assert not Path(ranks[1]["out"]).exists()  # rank 1's scratch folder is gone
    written = json.loads((workspace / "out" / "metrics.json").read_text())
    assert written["pruned"]["sparsity"] == ranks[0]["metrics"]["pruned"]["sparsity"]
    zeros = [1 - float(v.count_nonzero()) / v.numel() for k, v in ranks[0]["state"].items()
             if k.endswith("weight")][:-1]
    assert zeros == pytest.approx([0.8, 0.8], abs=0.01)


def test_the_docs_recipe_with_a_schedule_runs(workspace: Path) -> None:
    """docs/your-model.md's own-model recipe with a schedule: valid as written, and run
    with a tiny model and data in place of the ResNet-18 and the image folder."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "your-model.md").read_text()
    (text,) = re.findall(r"```yml\n(.*?)```", doc, flags=re.S)
    written = yaml.safe_load(text)
    assert parse_recipe(written).schedule.kind == "gradual"
    tiny = {**written, "model": {"python": "tiny_nets:mlp"},
            "data": {**_recipe(workspace)["data"], "val_fraction": 0.1},
            "measure": {"latency_runs": 2, "batch_sizes": [1]}}
    result = run(parse_recipe(tiny), out_dir=workspace / "out", quiet=True)
    assert _prunable_sparsity(result) == pytest.approx(0.8, abs=0.01)
    assert "58 train / 6 validation" in (workspace / "out" / "report.md").read_text()


HF_NETS = textwrap.dedent("""
    import torch
    import transformers

    def llama():
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=64,
                                       tie_word_embeddings=True)
        return transformers.LlamaForCausalLM(cfg).eval()
""")


def test_owl_in_a_recipe_sets_the_one_shot_allocation(workspace: Path) -> None:
    prune = parse_recipe(_recipe(workspace, prune={"method": "wanda", "sparsity": 0.5,
                                                   "owl": True})).prune
    assert prune.oneshot_config(quiet=True).allocation == "owl"


def _llama_recipe(workspace: Path, **prune) -> Recipe:
    """A tiny Hugging Face Llama (tied embedding) on byte-tokenized text, pruned one shot."""
    pytest.importorskip("transformers", reason="pip install transformers")
    (workspace / "hf_nets.py").write_text(HF_NETS)
    text = str(workspace / "text.txt")
    return parse_recipe(_recipe(
        workspace, task="language-modelling", model={"python": "hf_nets:llama"},
        data={"kind": "text", "train": text, "test": text, "seq_len": 16,
              "tokenizer": "bytes", "batch_size": 4},
        prune=prune, finetune={"epochs": 0}))


def test_a_language_model_is_pruned_by_sparsegpt_block_by_block(workspace: Path) -> None:
    recipe = _llama_recipe(workspace, method="sparsegpt", sparsity=0.5, calibration_batches=2)
    result = run(recipe, out_dir=workspace / "llm", quiet=True)
    cut = result.metrics["run"]["oneshot"]
    assert cut["method"] == "sparsegpt" and cut["calibration_batches"] == 2
    assert cut["sparsity"] == pytest.approx(0.5, abs=0.01) and cut["peak_rss_bytes"] > 0
    assert len(cut["layers"]) == 2 * 7  # q, k, v, o, gate, up, down in each block
    assert all(v == pytest.approx(0.5, abs=0.02) for v in cut["layers"].values())
    dense, pruned = result.metrics["dense"], result.metrics["pruned"]
    assert 1.0 < dense["perplexity"] and 1.0 < pruned["perplexity"] < 1e4
    assert (workspace / "llm" / "pruned.sparse.safetensors").exists()
    from prunekit._io import load_safetensors  # the tied embedding is stored once, given back

    dense_file = load_safetensors(workspace / "llm" / "dense.safetensors")
    assert dense_file["lm_head.weight"] is dense_file["model.embed_tokens.weight"]
    report = (workspace / "llm" / "report.md").read_text()
    assert "## One shot" in report and "`sparsegpt` pruned the blocks of `model.layers`" in report


@pytest.mark.parametrize(("prune", "schedule", "match"), [
    ({"method": "sparsegpt", "sparsity": 0.5}, {"kind": "gradual", "end": 2},
     "use schedule.kind: oneshot"),
    ({"method": "sparsegpt", "threshold": 0.1}, {"kind": "oneshot"}, "takes sparsity or pattern"),
    ({"method": "sparsgpt", "sparsity": 0.5}, {"kind": "oneshot"}, "did you mean 'sparsegpt'"),
    ({"method": "wanda", "granularity": "channel", "ratio": 0.5}, {"kind": "oneshot"},
     "prune.method: method is an option of masks"),
    ({"sparsity": 0.5, "owl": True}, {"kind": "oneshot"}, "give prune.method"),
])
def test_a_oneshot_method_is_refused_where_it_cannot_run(workspace, prune, schedule,
                                                         match) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_recipe(_recipe(workspace, prune=prune, schedule=schedule,
                             finetune={"epochs": 2}))


def test_a_oneshot_method_on_a_model_without_repeated_blocks_fails_before_anything_runs(
        workspace: Path) -> None:
    text = str(workspace / "text.txt")
    recipe = parse_recipe(_recipe(
        workspace, task="language-modelling", model={"python": "tiny_nets:lm"},
        data={"kind": "text", "train": text, "test": text, "seq_len": 16, "tokenizer": "bytes"},
        prune={"method": "wanda", "sparsity": 0.5}, finetune={"epochs": 0}))
    with pytest.raises(ConfigError, match="prune.method 'wanda' does not fit the model"):
        run(recipe, out_dir=workspace / "lm", quiet=True)
    assert not (workspace / "lm" / "metrics.json").exists()


def test_a_gguf_file_is_checked_before_transformers_reads_it(workspace: Path) -> None:
    from prunekit.models.sources import load_model

    with pytest.raises(ConfigError, match="is not a file in"):
        load_model({"source": "transformers", "path": str(workspace), "auto": "causal-lm",
                    "gguf_file": "missing.gguf"})
    with pytest.raises(ConfigError, match="gguf_file goes with source transformers"):
        load_model({"source": "torchvision", "name": "resnet18", "gguf_file": "x.gguf"})


def test_a_data_driven_criterion_without_the_data_it_needs_fails_before_anything_runs(
        workspace: Path) -> None:
    text = str(workspace / "text.txt")
    lm = dict(task="language-modelling", model={"python": "tiny_nets:lm"},
              data={"kind": "text", "train": text, "test": text, "seq_len": 16,
                    "tokenizer": "bytes"}, finetune={"epochs": 0})
    with pytest.raises(ConfigError, match="prune.criterion 'taylor' takes gradients of a "
                                          "cross-entropy on labelled"):
        run(parse_recipe(_recipe(workspace, prune={"sparsity": 0.5, "criterion": "taylor"},
                                 **lm)), out_dir=workspace / "t", quiet=True)
    assert not (workspace / "t" / "metrics.json").exists()
    # activation norms need no labels: Wanda's per-weight scores run on the token ids
    result = run(parse_recipe(_recipe(workspace, prune={"sparsity": 0.5, "criterion": "wanda"},
                                      **lm)), out_dir=workspace / "w", quiet=True)
    assert result.metrics["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_dry_run_of_a_oneshot_method_says_which_blocks_and_reads_no_data(workspace: Path) -> None:
    recipe = _llama_recipe(workspace, method="sparsegpt", pattern="2:4", calibration_batches=3)
    out = dry_run(recipe, quiet=True)
    assert "cut: sparsegpt block by block over model.layers (2 blocks; 3 calibration" in out
    assert "pattern 2:4" in out and "layers masked: 14; sparsity after:" in out

"""Trained net + tokenizer + provenance + metrics -> a model folder with card and curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server
import matplotlib.pyplot as plt
from tokenizers import Tokenizer

from textrnn.artifact import save_artifact
from textrnn.nets import CharLM, RNNClassifier

__all__ = ["export_model", "plot_curves", "write_model_card"]


def plot_curves(history: list[dict[str, Any]], metric: str, path: Path) -> None:
    """training.png: training loss and dev/validation curves against steps."""
    train = [r for r in history if "loss" in r and "eval" not in r]
    evals = [r for r in history if "eval" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    left.plot([r["step"] for r in evals], [r["eval"]["loss"] for r in evals], "o-",
              label="dev loss")
    left.set_xlabel("step")
    left.set_ylabel("loss (nats)")
    left.legend()
    right.plot([r["step"] for r in evals], [r["eval"][metric] for r in evals], "o-", color="C2")
    right.set_xlabel("step")
    right.set_ylabel(f"dev {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    lines = []
    for split, values in metrics.items():
        shown = {k: v for k, v in values.items() if isinstance(v, int | float)}
        lines.append(f"- **{split}**: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
        if "confusion_matrix" in values:
            lines.append(f"  - confusion matrix (rows gold, columns predicted): "
                         f"`{json.dumps(values['confusion_matrix'])}`")
    return lines


def _pretraining_lines(pre: dict[str, Any] | None) -> list[str]:
    if not pre:
        return []
    val = pre.get("validation", {})
    return ["## Pretraining", "",
            "The embedding and recurrent layer start from an encoder pretrained as a "
            "bidirectional language model (`python -m training pretrain`):", "",
            *[f"- `{d['path']}` (sha256 `{d['sha256']}`)" for d in pre["data"]],
            f"- command: `{pre['command']}`",
            f"- seed {pre['seed']}, {pre['steps']} steps ({pre['epochs']} epochs), "
            f"{pre['wall_time_s']} s on {pre['device']}; validation LM loss "
            f"{val.get('loss', float('nan')):.4f} nats/word (perplexity "
            f"{val.get('perplexity', float('nan')):.1f})"
            + (f", review-label loss {val['label_loss']:.4f}" if "label_loss" in val else ""), ""]


def write_model_card(folder: Path, config: dict[str, Any]) -> None:
    """README.md of the model folder, written from its config."""
    arch, train = config["architecture"], config["training"]
    task = config["task"]
    labels = config.get("labels") or []
    use = (f"Classifies texts like its training data into {len(labels)} labels "
           f"({', '.join(f'`{label}`' for label in labels)}); the service answers "
           "`POST /classify`." if task == "classification" else
           "Character-level text generation and scoring in the style of its training text; "
           "the service answers `POST /generate` and `POST /score`.")
    limits = ("Trained on the text it names only; expect lower accuracy on text unlike it "
              "(other domains, languages, very long documents). Not for decisions about people."
              if task == "classification" else
              "Produces text that looks like its training data but has no knowledge or intent; "
              "characters outside its alphabet are read as an unknown token.")
    lines = [
        f"# {config['name']}", "",
        f"A {'bidirectional ' if arch['bidirectional'] else ''}{arch['cell'].upper()} "
        f"{task} model ({arch['num_layers']} layer(s), hidden {arch['hidden_size']}, "
        f"embedding {arch['embedding_dim']}), {config['parameters']:,} parameters.", "",
        "## Data", "",
        *[f"- `{d['path']}` (sha256 `{d['sha256']}`)" for d in train["data"]], "",
        "## Metrics", "", *_metric_lines(config["metrics"]), "",
        *_pretraining_lines(train["hyperparameters"].get("pretraining")),
        "## Training", "",
        f"- command: `{train['command']}`",
        f"- seed {train['seed']}, {train['steps']} steps ({train['epochs']} epochs), "
        f"{train['wall_time_s']} s on {train['device']} (torch {train['torch_version']}); "
        f"stopped: {train['stopped_because']}",
        f"- hyperparameters: `{json.dumps(train['hyperparameters'])}`", "",
        "## Intended use", "", use, "",
        "## Limits", "", limits, "",
        "![training curves](training.png)", "",
    ]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def export_model(folder: Path, net: RNNClassifier | CharLM, tokenizer: Tokenizer,
                 extra: dict[str, Any], history: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Write the whole model folder; returns its config."""
    config = save_artifact(folder, net, tokenizer, extra)
    plot_curves(history, metric, folder / "training.png")
    write_model_card(folder, config)
    return config

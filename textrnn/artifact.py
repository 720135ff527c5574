"""The model folder format: `save_artifact`, `load_artifact` and `ArtifactError`.

A model folder holds `config.json`, `model.safetensors` (weights only: loading runs no code)
and `tokenizer.json`; training adds a model card `README.md` and `training.png`. Loading checks
every promise the folder makes and names the folder and the reason when one is broken.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from textrnn.halfweights import HalfWeightRNN, use_half_weights
from textrnn.nets import CharLM, NetConfig, RNNClassifier, build_net, count_parameters
from textrnn.tokenization import load_tokenizer, save_tokenizer

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "Artifact",
    "ArtifactError",
    "load_artifact",
    "save_artifact",
    "sha256_file",
]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


class ArtifactError(Exception):
    """A model folder that cannot be saved or loaded; the message names folder and reason."""

    def __init__(self, folder: Path | str, reason: str) -> None:
        super().__init__(f"model folder '{folder}': {reason}")
        self.folder = str(folder)
        self.reason = reason


@dataclass
class Artifact:
    """A loaded model: its net (in eval mode, on its device), tokenizer and config."""

    name: str
    folder: Path
    config: dict[str, Any]
    net_config: NetConfig
    net: RNNClassifier | CharLM
    tokenizer: Tokenizer

    @property
    def task(self) -> str:
        """`classification` or `generation`."""
        return self.net_config.task

    @property
    def labels(self) -> list[str]:
        """Label names in logit order (empty for language models)."""
        return list(self.config.get("labels") or [])

    @property
    def weights(self) -> str:
        """How the recurrent weights are held for inference: float16 or float32."""
        return "float16" if isinstance(getattr(self.net, "rnn", None), HalfWeightRNN) else "float32"

    @property
    def parameters(self) -> int:
        """Number of parameters of the net."""
        return count_parameters(self.net)

    @property
    def token_texts(self) -> list[str]:
        """Each token id's text, by id (a language model's vocabulary)."""
        texts = [""] * self.net_config.vocab_size
        for token, i in self.tokenizer.get_vocab().items():
            texts[i] = token
        return texts


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(folder: Path, net: RNNClassifier | CharLM, tokenizer: Tokenizer,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write weights, tokenizer and config.json into `folder`; return the config written.

    `extra` adds keys to config.json (labels, max_length, training, metrics, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer.get_vocab_size() != net.config.vocab_size:
        raise ArtifactError(folder, f"tokenizer has {tokenizer.get_vocab_size()} entries but "
                                    f"the net's vocab_size is {net.config.vocab_size}")
    # Tied weights share storage; safetensors wants each tensor once, so store the head
    # only when it is not the embedding.
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
             if not (net.config.tie_weights and k == "head.weight")}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    # safetensors writes through a private temporary file, and the weights would keep its
    # mode 0600: unreadable to a server running as another user. They get the mode the other
    # files get (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    (folder / WEIGHTS_FILE).chmod(0o666 & ~umask)
    save_tokenizer(tokenizer, folder / TOKENIZER_FILE)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": folder.name,
        "task": net.config.task,
        "architecture": net.config.to_dict(),
        "labels": [],
        "max_length": None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    config |= extra or {}
    config["parameters"] = count_parameters(net)
    config["weights_sha256"] = sha256_file(folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(folder, f"cannot read {CONFIG_FILE}: {e}") from e
    if not isinstance(config, dict):
        raise ArtifactError(folder, f"{CONFIG_FILE} must hold a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(folder, f"format_version {version!r} is not supported; this "
                                    f"version of textrnn reads format_version {FORMAT_VERSION}")
    return config


def load_artifact(folder: Path | str, device: torch.device | str = "cpu",
                  weights: str = "float32") -> Artifact:
    """Load and check a model folder; any broken promise raises `ArtifactError`.

    `weights="float16"` stores an LSTM's or GRU's recurrent weights as float16 for inference
    on the CPU (`textrnn.halfweights`); where that does not apply they stay float32, and
    `Artifact.weights` says which."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(folder, "not a directory")
    for required in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (folder / required).is_file():
            raise ArtifactError(folder, f"missing {required}")
    config = _read_config(folder)
    expected = config.get("weights_sha256")
    actual = sha256_file(folder / WEIGHTS_FILE)
    if expected != actual:
        raise ArtifactError(folder, f"{WEIGHTS_FILE} sha256 is {actual}, config.json says "
                                    f"{expected}: the weights were changed or damaged")
    try:
        net_config = NetConfig.from_dict(dict(config.get("architecture") or {}))
    except (TypeError, ValueError) as e:
        raise ArtifactError(folder, f"bad architecture in {CONFIG_FILE}: {e}") from e
    if net_config.task != config.get("task"):
        raise ArtifactError(folder, f"task {config.get('task')!r} disagrees with the "
                                    f"architecture's task {net_config.task!r}")
    labels = config.get("labels") or []
    if net_config.task == "classification" and len(labels) != net_config.num_labels:
        raise ArtifactError(folder, f"{len(labels)} labels listed but the net has "
                                    f"{net_config.num_labels} outputs")
    try:
        tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
    except Exception as e:  # tokenizers raises a bare Exception for a bad file
        raise ArtifactError(folder, f"cannot read {TOKENIZER_FILE}: {e}") from e
    if tokenizer.get_vocab_size() != net_config.vocab_size:
        raise ArtifactError(folder, f"tokenizer has {tokenizer.get_vocab_size()} entries but "
                                    f"the embedding has {net_config.vocab_size} rows")
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(folder, f"cannot read {WEIGHTS_FILE}: {e}") from e
    net = build_net(net_config)
    if net_config.tie_weights:
        state.setdefault("head.weight", state.get("embedding.weight", torch.empty(0)))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(folder, f"weights do not fit the architecture: {e}") from e
    net.to(device).eval()
    if weights == "float16":
        use_half_weights(net)
    elif weights != "float32":
        raise ValueError(f"weights must be float16 or float32, not {weights!r}")
    return Artifact(folder.name, folder, config, net_config, net, tokenizer)

"""The classification task: data, batches, loss and dev evaluation for `fit`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrnn.inference import classify_logits, pad_batch
from textrnn.nets import RNNClassifier

from .data import bucket_batches
from .device import to_device
from .distributed import Part

__all__ = ["ClassifierJob", "classification_report"]


def classification_report(labels: list[str], gold: list[int], pred: list[int]) -> dict[str, Any]:
    """Accuracy, macro F1, per-label precision/recall/F1 and the confusion matrix."""
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]  # rows gold, columns predicted
    for g, p in zip(gold, pred, strict=True):
        confusion[g][p] += 1
    per_label = {}
    for i, label in enumerate(labels):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(n))
        actual = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    correct = sum(confusion[i][i] for i in range(n))
    return {"accuracy": correct / max(1, len(gold)),
            "macro_f1": sum(v["f1"] for v in per_label.values()) / n,
            "per_label": per_label, "confusion_matrix": confusion, "examples": len(gold)}


def predict(net: RNNClassifier, seqs: list[list[int]], batch_size: int = 256) -> Tensor:
    """Logits [N, C] for all sequences, batched by length for speed, in input order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), net.config.num_labels)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = classify_logits(net, [seqs[i] for i in rows]).float().cpu()
    return out


class ClassifierJob:
    """Supplies `fit` with length-bucketed batches of a labelled corpus and dev evaluation."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, net: RNNClassifier, train: tuple[list[list[int]], list[int]],
                 dev: tuple[list[list[int]], list[int]], labels: list[str], batch_size: int,
                 seed: int, word_dropout: float = 0.0, part: Part | None = None) -> None:
        self.net = net
        self.part = part or Part()
        self.train_ids, self.train_labels = train
        self.dev_ids, self.dev_labels = dev
        self.labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self.word_dropout = word_dropout
        self._lengths = [len(s) for s in self.train_ids]

    def batches(self, epoch: int) -> Sequence[list[int]]:
        """This epoch's batches of example indices (the same for the same seed and epoch)."""
        return bucket_batches(self._lengths, self.batch_size, random.Random(self.seed * 100_003 + epoch))

    def loss(self, batch: list[int]) -> tuple[Tensor, int]:
        """Mean cross-entropy over one batch; under torchrun, this rank's share of that mean
        (its rows' summed loss over the global batch's size), which the ranks' summed
        gradients turn back into the mean's gradient."""
        rows, scale = batch, None
        if self.part.world_size > 1:
            # A rank left without rows still runs the net (every rank must take part in
            # the gradient all-reduce), on one row weighted zero.
            mine = self.part.strided(batch)
            rows, scale = (mine, 1.0 / len(batch)) if mine else (batch[:1], 0.0)
        ids, lengths = pad_batch([self.train_ids[i] or [1] for i in rows])
        if self.word_dropout > 0:  # drawn on the CPU so a seed means the same on any device
            drop = (torch.rand(ids.shape) < self.word_dropout) & (ids > 1)
            ids = ids.masked_fill(drop, 1)  # 1 is the unknown word
        device = self.net.head.weight.device
        logits = self.net(to_device(ids, device), lengths)
        target = to_device(torch.tensor([self.train_labels[i] for i in rows]), device)
        if scale is None:
            return F.cross_entropy(logits, target), len(rows)
        return F.cross_entropy(logits, target, reduction="sum") * scale, (len(rows) if scale else 0)

    def evaluate(self) -> dict[str, Any]:
        """Dev loss, accuracy, macro F1 and confusion matrix."""
        logits = predict(self.net, self.dev_ids)
        gold = torch.tensor(self.dev_labels)
        report = classification_report(self.labels, self.dev_labels, logits.argmax(1).tolist())
        return {"loss": float(F.cross_entropy(logits, gold))} | report

    def layers(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Parameters from the top down: the head, the recurrent layers (the last first), the
        word vectors (for discriminative learning rates and gradual unfreezing)."""
        named = dict(self.net.named_parameters())
        rnn = [[(n, p) for n, p in named.items()
                if n.startswith("rnn.") and n.split("_l")[-1].split("_")[0] == str(k)]
               for k in reversed(range(self.net.config.num_layers))]
        top = [(n, p) for n, p in named.items() if not n.startswith(("rnn.", "embedding."))]
        bottom = [(n, p) for n, p in named.items() if n.startswith("embedding.")]
        return [top, *rnn, bottom]

    def extra_state(self) -> dict[str, Tensor]:
        """Nothing beyond the loop's own state."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Nothing to restore."""

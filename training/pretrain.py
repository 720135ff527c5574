"""Pretraining a classifier's encoder on unlabelled (or differently labelled) text.

The encoder (embedding + one bidirectional recurrent layer, exactly as `RNNClassifier` builds it)
is trained as a bidirectional word-level language model, ELMo-style: the forward half of each
output predicts the next word, the backward half the previous one, through one adaptive softmax
shared by both directions. When the corpus has labels (IMDB's review sentiment), a max-pooled
head can learn them at the same time. The classifier is then initialised from the encoder
(`python -m training classify --init-from`), as ULMFiT and Dai & Le did.

One layer only when bidirectional: a second layer would read both directions of the first, so
each direction would see the word it has to predict.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.torch_version import TorchVersion

from textrnn.inference import pad_batch
from textrnn.nets import NetConfig, RNNClassifier

from .data import bucket_batches
from .device import to_device
from .distributed import Part

__all__ = ["BiLM", "BiLMJob", "chunk_sentences", "load_encoder", "save_encoder"]

ENCODER_FORMAT = 1
_SENTENCE_END = re.compile(r"^[.!?]+$")


def chunk_sentences(tokens: list[str], ids: list[int], max_length: int) -> list[list[int]]:
    """Cut one document into chunks of whole sentences of at most `max_length` ids (a longer
    sentence is cut into pieces), so the encoder trains on sentence-sized spans as it serves."""
    sentences: list[list[int]] = []
    current: list[int] = []
    for token, i in zip(tokens, ids, strict=True):
        current.append(i)
        if _SENTENCE_END.match(token):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    chunks: list[list[int]] = []
    chunk: list[int] = []
    for sentence in sentences:
        for start in range(0, len(sentence), max_length):
            piece = sentence[start:start + max_length]
            if chunk and len(chunk) + len(piece) > max_length:
                chunks.append(chunk)
                chunk = []
            chunk = chunk + piece
    if chunk:
        chunks.append(chunk)
    return [c for c in chunks if len(c) >= 2]


class BiLM(nn.Module):
    """A bidirectional one-layer `RNNClassifier` encoder trained as two language models."""

    def __init__(self, encoder: RNNClassifier, cutoffs: Sequence[int]) -> None:
        super().__init__()
        cfg = encoder.config
        if not cfg.bidirectional or cfg.num_layers != 1:
            raise ValueError("pretraining needs a bidirectional encoder with one layer")
        self.encoder = encoder
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(cfg.hidden_size, cfg.vocab_size,
                                                     list(cutoffs), div_value=4.0)

    def losses(self, ids: Tensor, lengths: Tensor,
               per: int | None = None) -> tuple[Tensor, Tensor]:
        """Mean next/previous-word loss over both directions (with `per`, their summed loss
        over 2 * per predictions instead), and the label logits [B, C]."""
        enc = self.encoder
        emb = enc.dropout(enc.embedding(ids))
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(enc.rnn(packed)[0], batch_first=True)  # B T 2H
        steps = out.size(1)
        ids = ids[:, :steps]
        valid = torch.arange(steps, device=out.device)[None, :] < lengths.to(out.device)[:, None]
        hidden = enc.config.hidden_size
        dropped = enc.dropout(out)
        # forward half at t predicts t+1; backward half at t predicts t-1
        fwd_mask = valid[:, 1:]
        # The adaptive softmax copies each cluster's log-probabilities into a tensor made
        # like its input; autocast's per-op casts would mix their dtypes, so under mixed
        # precision it runs in float32 (in fp32 training both lines change nothing).
        with torch.autocast(out.device.type, enabled=False):
            fwd = self.softmax(dropped[:, :-1, :hidden][fwd_mask].float(), ids[:, 1:][fwd_mask])
            bwd = self.softmax(dropped[:, 1:, hidden:][fwd_mask].float(), ids[:, :-1][fwd_mask])
        pooled = out.masked_fill(~valid.unsqueeze(-1), float("-inf")).max(1).values
        logits = enc.head(enc.dropout(pooled))
        if per is None:
            return (fwd.loss + bwd.loss) / 2, logits
        return -(fwd.output.sum() + bwd.output.sum()) / (2 * per), logits


class BiLMJob:
    """Supplies `fit` with batches of document chunks; selection by validation LM loss."""

    metric = "loss"
    higher_is_better = False

    def __init__(self, net: BiLM, train: tuple[list[list[int]], list[int] | None],
                 val: tuple[list[list[int]], list[int] | None], batch_size: int, seed: int,
                 label_weight: float = 0.0, part: Part | None = None) -> None:
        self.net = net
        self.part = part or Part()
        # The label head goes unused without labels, and a tail cluster of the adaptive
        # softmax in a batch without its words: DDP must look for unused parameters.
        self.unused_parameters = True
        self.train_ids, self.train_labels = train
        self.val_ids, self.val_labels = val
        self.batch_size = batch_size
        self.seed = seed
        self.label_weight = label_weight if self.train_labels is not None else 0.0
        self._lengths = [len(s) for s in self.train_ids]

    def batches(self, epoch: int) -> Sequence[list[int]]:
        """This epoch's batches of chunk indices (the same for the same seed and epoch)."""
        return bucket_batches(self._lengths, self.batch_size, random.Random(self.seed * 100_003 + epoch))

    def _run(self, seqs: list[list[int]], labels: list[int] | None, rows: list[int],
             whole: list[int] | None = None) -> tuple[Tensor, Tensor]:
        """LM and label loss of `rows`: means over them, or, given the `whole` global batch
        they are part of, their summed losses over its word and text counts."""
        ids, lengths = pad_batch([seqs[i] for i in rows])
        device = self.net.softmax.head.weight.device
        per = None if whole is None else sum(len(seqs[i]) - 1 for i in whole)
        lm, logits = self.net.losses(to_device(ids, device), lengths, per)
        if labels is None:
            return lm, torch.zeros((), device=device)
        target = to_device(torch.tensor([labels[i] for i in rows]), device)
        if whole is None:
            return lm, F.cross_entropy(logits, target)
        return lm, F.cross_entropy(logits, target, reduction="sum") / len(whole)

    def loss(self, batch: list[int]) -> tuple[Tensor, int]:
        """LM loss plus, with labels, `label_weight` times the label cross-entropy; under
        torchrun this rank's share of it (see ClassifierJob.loss)."""
        if self.part.world_size == 1:
            lm, label = self._run(self.train_ids, self.train_labels, batch)
            return lm + self.label_weight * label, len(batch)
        mine = self.part.strided(batch)
        lm, label = self._run(self.train_ids, self.train_labels, mine or batch[:1], batch)
        weight = 1.0 if mine else 0.0  # a rank without rows runs one, weighted zero
        return (lm + self.label_weight * label) * weight, len(mine)

    def evaluate(self) -> dict[str, Any]:
        """Validation LM loss (nats per word, both directions) and perplexity; label loss too."""
        order = sorted(range(len(self.val_ids)), key=lambda i: len(self.val_ids[i]))
        words, lm_total, label_total = 0, 0.0, 0.0
        for start in range(0, len(order), 128):
            rows = order[start:start + 128]
            lm, label = self._run(self.val_ids, self.val_labels, rows)
            n = sum(len(self.val_ids[i]) - 1 for i in rows)
            lm_total += float(lm) * n
            label_total += float(label) * len(rows)
            words += n
        loss = lm_total / max(1, words)
        report: dict[str, Any] = {"loss": loss, "perplexity": math.exp(loss), "words": words}
        if self.val_labels is not None:
            report["label_loss"] = label_total / max(1, len(self.val_ids))
        return report

    def extra_state(self) -> dict[str, Tensor]:
        """Nothing beyond the loop's own state."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Nothing to restore."""


def save_encoder(path: Path, encoder: RNNClassifier, tokenizer_json: str,
                 provenance: dict[str, Any]) -> None:
    """Write the encoder (architecture, weights, tokenizer, provenance) as one torch file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": ENCODER_FORMAT, "architecture": encoder.config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
                "tokenizer": tokenizer_json,
                "provenance": json.loads(json.dumps(provenance))}, tmp)  # plain types only
    tmp.replace(path)


def load_encoder(path: Path) -> dict[str, Any]:
    """Read a file written by `save_encoder` (tensors and plain data only; no code runs)."""
    # TorchVersion: files of the first release kept torch.__version__'s own type
    with torch.serialization.safe_globals([TorchVersion]):
        data: dict[str, Any] = torch.load(path, weights_only=True)
    if data.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path}: not a pretrained encoder of format {ENCODER_FORMAT}")
    NetConfig.from_dict(data["architecture"])
    return data

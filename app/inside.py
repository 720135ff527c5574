"""The work behind /inside/memory, /inside/units and /explain: tokenize, check the request's
size against its limits, compute with textrnn.memory or textrnn.attribution, shape the answer.
Each function is a computation in pieces (`textrnn.pieces`): the service runs them one at a
time on the model's inference thread, in inference mode, its batches going between them."""

from __future__ import annotations

import torch
from torch import Tensor

from app.errors import InvalidInput
from app.inside_schemas import (
    EXPLAIN_MAX_WORK,
    Contribution,
    ExplainRequest,
    ExplainResponse,
    MemoryRequest,
    MemoryResponse,
    Step,
    UnitScore,
    UnitsRequest,
    UnitsResponse,
)
from app.inside_schemas import MEMORY_MAX_VALUES as MAX_VALUES
from app.schemas import LabelScore
from textrnn.artifact import Artifact
from textrnn.attribution import integrated_gradients_pieces, occlusion_pieces
from textrnn.inference import classify_logits
from textrnn.memory import SERIES, rank_units, trace_layer_pieces, units_of
from textrnn.nets import RNNClassifier
from textrnn.pieces import Pieces

__all__ = ["EXPLAIN_MAX_WORDS", "explain", "memory", "units"]

EXPLAIN_MAX_WORDS = 256  # occlusion runs words + 1 texts of as many words


def memory(artifact: Artifact, body: MemoryRequest) -> Pieces[MemoryResponse]:
    """Each step's values of the chosen layer, series and units."""
    net = artifact.net
    layer = _layer(artifact, body.layer)
    names = [_series(artifact, s, f"series[{i}]") for i, s in enumerate(body.series)]
    wanted = body.units or list(range(units_of(net)))
    for i, unit in enumerate(wanted):
        _unit(artifact, unit, f"units[{i}]")
    ids, steps, truncated = _steps(artifact, body.inputs)
    values = len(steps) * len(wanted) * len(names)
    if values > MAX_VALUES:
        raise InvalidInput(
            f"this request asks for {len(steps)} steps x {len(wanted)} units x {len(names)} "
            f"series = {values} values; the limit is {MAX_VALUES} (MEMORY_MAX_VALUES): choose "
            "fewer units or series, or send a shorter text", param="units")
    trace = yield from trace_layer_pieces(net, ids, layer)
    index = torch.tensor(wanted)
    series = {name: _rows(trace.series[name][:, index]) for name in names}  # T U each
    return MemoryResponse(model=artifact.name, cell=net.config.cell, layer=layer,
                          layers=net.config.num_layers, units=wanted, steps=steps, series=series,
                          truncated=truncated)


def units(artifact: Artifact, body: UnitsRequest) -> Pieces[UnitsResponse]:
    """The units of a layer that best tell the marked steps from the others, by AUC."""
    layer = _layer(artifact, body.layer)
    name = _series(artifact, body.series, "series")
    size = len(body.inputs)
    for i, span in enumerate(body.spans):
        if span.end > size:
            raise InvalidInput(f"spans[{i}].end is {span.end}; the text has {size} characters",
                               param=f"spans[{i}].end")
        if span.start >= span.end:
            raise InvalidInput(f"spans[{i}] is empty: start {span.start} is not before end "
                               f"{span.end}", param=f"spans[{i}].start")
    ids, steps, truncated = _steps(artifact, body.inputs)
    k = min(body.top_k, units_of(artifact.net))
    if len(steps) * k > MAX_VALUES:
        raise InvalidInput(f"this request asks for {len(steps)} steps x {k} units = "
                           f"{len(steps) * k} values; the limit is {MAX_VALUES} "
                           "(MEMORY_MAX_VALUES): send a shorter text or a smaller top_k",
                           param="top_k")
    inside = torch.tensor([any(s.start < span.end and s.end > span.start for span in body.spans)
                           for s in steps])  # T
    marked = int(inside.sum())
    if marked in (0, len(steps)):
        raise InvalidInput(f"the spans mark {marked} of the text's {len(steps)} steps; mark at "
                           "least one step and leave at least one unmarked", param="spans")
    values = (yield from trace_layer_pieces(artifact.net, ids, layer)).series[name]  # T U
    auc = rank_units(values, inside)  # U
    separation = (2 * auc - 1).abs()
    top = separation.argsort(descending=True, stable=True)[:k].tolist()
    mean_in, mean_out = values[inside].mean(0), values[~inside].mean(0)  # U, U
    scores = [UnitScore(unit=u, auc=round(float(auc[u]), 4),
                        separation=round(float(separation[u]), 4),
                        higher_inside=bool(auc[u] >= 0.5),
                        mean_inside=round(float(mean_in[u]), 4),
                        mean_outside=round(float(mean_out[u]), 4)) for u in top]
    rows = _rows(values[:, torch.tensor(top)])
    return UnitsResponse(model=artifact.name, layer=layer, series=name, steps=steps,
                         inside_steps=marked, units=scores, values=rows, truncated=truncated)


def explain(artifact: Artifact, body: ExplainRequest) -> Pieces[ExplainResponse]:
    """The label scores and each word's contribution to the explained label."""
    net = artifact.net
    assert isinstance(net, RNNClassifier)
    labels = artifact.labels
    if body.label is not None and body.label not in labels:
        raise InvalidInput(f"label {body.label!r} is not one of the model's labels: "
                           f"{', '.join(labels)}", param="label")
    id_list, steps, truncated = _steps(artifact, body.inputs)
    words = len(steps)
    if body.method == "integrated_gradients" and body.steps * words > EXPLAIN_MAX_WORK:
        raise InvalidInput(
            f"integrated gradients over {words} words x {body.steps} steps = "
            f"{body.steps * words}; the limit is {EXPLAIN_MAX_WORK} (EXPLAIN_MAX_WORK): lower "
            f"steps to {max(1, EXPLAIN_MAX_WORK // words)} or send a shorter text", param="steps")
    if body.method == "occlusion" and words > EXPLAIN_MAX_WORDS:
        raise InvalidInput(f"occlusion of {words} words; the limit is {EXPLAIN_MAX_WORDS} "
                           "(EXPLAIN_MAX_WORDS): send a shorter text", param="inputs")
    ids = id_list.tolist()
    probs = torch.softmax(classify_logits(net, [ids]).float(), dim=-1)[0].tolist()  # C
    label = labels.index(body.label) if body.label is not None else max(
        range(len(labels)), key=lambda i: probs[i])
    if body.method == "integrated_gradients":
        result = yield from integrated_gradients_pieces(net, ids, label, body.steps)
    else:
        result = yield from occlusion_pieces(net, ids, label)
    without: list[int | None] = [*result.without] if result.without else [None] * words
    contributions = [Contribution(text=s.text, start=s.start, end=s.end,
                                  contribution=round(float(c), 5),
                                  without=labels[w] if w is not None else None)
                     for s, c, w in zip(steps, result.words, without, strict=True)]
    scores = [LabelScore(label=labels[i], score=probs[i])
              for i in sorted(range(len(labels)), key=lambda i: -probs[i])]
    return ExplainResponse(model=artifact.name, label=labels[label], method=body.method,
                           scores=scores, log_prob=round(result.log_prob, 5),
                           baseline_log_prob=None if result.baseline is None
                           else round(result.baseline, 5),
                           words=contributions, truncated=truncated)


def _steps(artifact: Artifact, text: str) -> tuple[Tensor, list[Step], bool]:
    """The token ids [T] the model reads for `text`, each token's place in it, and whether
    the classifier's max_length cut it (as /classify does)."""
    encoding = artifact.tokenizer.encode(text, add_special_tokens=False)
    limit = artifact.config.get("max_length") or len(encoding.ids)
    if not encoding.ids:
        raise InvalidInput("inputs has no tokens the model reads (only spaces?)", param="inputs")
    ids, offsets = encoding.ids[:limit], encoding.offsets[:limit]
    steps = [Step(text=text[a:b], start=a, end=b) for a, b in offsets]
    device = artifact.net.head.weight.device
    return torch.tensor(ids, device=device), steps, len(encoding.ids) > limit


def _layer(artifact: Artifact, layer: int | None) -> int:
    layers = artifact.net.config.num_layers
    if layer is None:
        return layers - 1
    if layer >= layers:
        raise InvalidInput(f"layer is {layer}; model '{artifact.name}' has {layers} layer(s): "
                           f"0 to {layers - 1}", param="layer")
    return layer


def _series(artifact: Artifact, name: str, field: str) -> str:
    cell = artifact.net.config.cell
    if name not in SERIES[cell]:
        raise InvalidInput(f"{field} is {name!r}; a {cell} layer holds "
                           f"{', '.join(SERIES[cell])}", param=field)
    return name


def _unit(artifact: Artifact, unit: int, field: str) -> None:
    size = units_of(artifact.net)
    if not 0 <= unit < size:
        raise InvalidInput(f"{field} is {unit}; a layer of model '{artifact.name}' has {size} "
                           f"units: 0 to {size - 1}", param=field)


def _rows(values: Tensor) -> list[list[float]]:
    """[T, U] values as rows of floats with 4 decimal places (the JSON stays small)."""
    rows: list[list[float]] = values.double().cpu().round(decimals=4).tolist()
    return rows

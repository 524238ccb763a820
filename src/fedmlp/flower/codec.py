"""Our messages as Flower records, bit for bit: :class:`Broadcast` and :class:`Upload` ⇄ ``RecordDict``.

A message becomes three records:

- ``weights`` (``ArrayRecord``): the model's state dict, one ``Array`` per entry, in its order;
- ``tensors`` (``ArrayRecord``): every tensor of the method's payload, named ``0``, ``1``, ...;
- ``meta`` (``ConfigRecord``): the plain fields (round; client id, number of images, loss, weight)
  and the payload's structure as JSON, in which each tensor is a reference into ``tensors``.

A tensor travels as its raw bytes (C order, little-endian) with its torch dtype and shape, so every
dtype (bf16 and bool included) arrives bit-identical; floats in the structure travel as
``float.hex`` (exact, NaN and ±inf included); dict keys keep their type (FedMLP keys thresholds by
class index) and tuples stay tuples. Anything else (a NumPy scalar, an object) is refused on the
sending side with the payload path named, so that a method cannot send what would not arrive as sent.
Several uploads (a site answering for repeated visits) share one ``RecordDict``, each under its
index (``0.weights``, ``0.meta``, ...).
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedmlp.methods.messages import Broadcast, Upload, Weights

STYPE = "fedmlp.torch.raw-le"  # Array.stype of our tensors: raw little-endian bytes, torch dtype name

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships wheels for is little-endian
    raise ImportError("fedmlp.flower.codec assumes a little-endian machine")


def tensor_to_array(tensor: torch.Tensor) -> Array:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return Array(dtype=str(flat.dtype), shape=tuple(int(n) for n in tensor.shape), stype=STYPE,
                 data=flat.view(torch.uint8).numpy().tobytes())


def array_to_tensor(array: Array) -> torch.Tensor:
    if array.stype != STYPE:
        raise ValueError(f"array of serialisation {array.stype!r}, expected {STYPE!r}")
    dtype = getattr(torch, array.dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype {array.dtype!r}")
    shape = tuple(array.shape)
    if not array.data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(array.data), dtype=torch.uint8).view(dtype).reshape(shape)


# --- payload structure ------------------------------------------------------------------------


def encode_value(value: Any, tensors: list[torch.Tensor], path: str = "payload") -> Any:
    """A JSON-able form of ``value``; its tensors are appended to ``tensors`` and referenced by index."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return {"tensor": len(tensors) - 1}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return {"float": float(value).hex()}
    if isinstance(value, dict):
        return {"dict": [[encode_value(k, tensors, f"{path} key {k!r}"), encode_value(v, tensors, f"{path}[{k!r}]")]
                         for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [encode_value(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]
        return {"tuple" if isinstance(value, tuple) else "list": items}
    raise TypeError(f"{path}: a {type(value).__module__}.{type(value).__qualname__} cannot be sent "
                    "(messages hold tensors, None, bool, int, float, str and dicts, lists and tuples of them)")


def decode_value(value: Any, tensors: list[torch.Tensor]) -> Any:
    if not isinstance(value, dict):
        return value
    (tag, inner), = value.items()
    if tag == "tensor":
        return tensors[inner]
    if tag == "float":
        return float.fromhex(inner)
    if tag == "dict":
        return {_hashable(decode_value(k, tensors)): decode_value(v, tensors) for k, v in inner}
    if tag == "list":
        return [decode_value(v, tensors) for v in inner]
    if tag == "tuple":
        return tuple(decode_value(v, tensors) for v in inner)
    raise ValueError(f"unknown tag {tag!r} in a message")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise ValueError("a list cannot be a dict key")
    return key


def pack(payload: dict[str, Any]) -> tuple[str, ArrayRecord]:
    """A payload as (its structure as JSON, its tensors as an ArrayRecord)."""
    tensors: list[torch.Tensor] = []
    structure = json.dumps(encode_value(payload, tensors), separators=(",", ":"))
    return structure, ArrayRecord({str(i): tensor_to_array(t) for i, t in enumerate(tensors)})


def unpack(structure: str, record: ArrayRecord) -> Any:
    tensors = [array_to_tensor(record[str(i)]) for i in range(len(record))]
    return decode_value(json.loads(structure), tensors)


def weights_to_record(weights: Weights) -> ArrayRecord:
    return ArrayRecord({key: tensor_to_array(value) for key, value in weights.items()})


def record_to_weights(record: ArrayRecord) -> Weights:
    return {key: array_to_tensor(array) for key, array in record.items()}


# --- messages ----------------------------------------------------------------------------------


def broadcast_to_content(broadcast: Broadcast, control: dict[str, Any] | None = None) -> RecordDict:
    """A broadcast, plus ``control`` (instructions to the site that are not part of the method's
    message: which visits to train, which saved state to continue from), as a RecordDict."""
    structure, tensors = pack(broadcast.payload)
    meta = ConfigRecord({"round": broadcast.round, "payload": structure,
                         "control": json.dumps(encode_value(control or {}, []), separators=(",", ":"))})
    return RecordDict({"weights": weights_to_record(broadcast.weights), "tensors": tensors, "meta": meta})


def content_to_broadcast(content: RecordDict) -> tuple[Broadcast, dict[str, Any]]:
    meta = content["meta"]
    broadcast = Broadcast(int(meta["round"]), record_to_weights(content["weights"]), unpack(str(meta["payload"]), content["tensors"]))
    return broadcast, decode_value(json.loads(str(meta["control"])), [])


def _float_field(value: float | None) -> str:
    return "" if value is None else float(value).hex()


def _field_float(text: str) -> float | None:
    return None if text == "" else float.fromhex(text)


def uploads_to_content(uploads: list[Upload]) -> RecordDict:
    records: dict[str, Any] = {"count": ConfigRecord({"uploads": len(uploads)})}
    for i, upload in enumerate(uploads):
        structure, tensors = pack(upload.payload)
        records[f"{i}.meta"] = ConfigRecord({
            "client_id": int(upload.client_id), "n_samples": int(upload.n_samples), "loss": _float_field(upload.loss),
            "weight": _float_field(upload.weight), "payload": structure, "has_weights": upload.weights is not None})
        records[f"{i}.tensors"] = tensors
        if upload.weights is not None:
            records[f"{i}.weights"] = weights_to_record(upload.weights)
    return RecordDict(records)


def content_to_uploads(content: RecordDict) -> list[Upload]:
    uploads = []
    for i in range(int(content["count"]["uploads"])):
        meta = content[f"{i}.meta"]
        weights = record_to_weights(content[f"{i}.weights"]) if meta["has_weights"] else None
        loss = _field_float(str(meta["loss"]))
        uploads.append(Upload(client_id=int(meta["client_id"]), n_samples=int(meta["n_samples"]), weights=weights,
                              loss=math.nan if loss is None else loss, weight=_field_float(str(meta["weight"])),
                              payload=unpack(str(meta["payload"]), content[f"{i}.tensors"])))
    return uploads


def content_bytes(content: RecordDict) -> int:
    """The tensor bytes a message carries (every array of its records), known before decoding it."""
    return sum(len(array.data) for record in content.values() if isinstance(record, ArrayRecord) for array in record.values())


def payload_summary(payload: dict[str, Any]) -> str:
    """What a payload holds, for logs and the README table: ``key: dtype[shape]`` per entry."""
    def describe(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(describe(v) for v in value) + "]"
        return type(value).__name__
    return ", ".join(f"{k}: {describe(v)}" for k, v in payload.items()) or "(nothing)"

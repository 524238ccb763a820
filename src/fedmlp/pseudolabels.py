"""The pseudo-label artifact (``pseudolabels.json``) that ``fedmlp pseudolabel`` writes and
``fedmlp teacher`` reads back, checked before a method preloads it.

Its format is the one :meth:`fedmlp.methods.fedmlp.FedMLP.export` writes::

    {"method", "round", "config", "classes",
     "global_learning_degree": {class: number or null},
     "global_prior": {class: number in (0, 1)},      (only with degree_scale: prior)
     "global_prototypes": {class: {"negative": [numbers] or null, "positive": [numbers] or null}},
     "clients": [{"id", "classes": {missing class: {"learning_degree", "tau0", "tau1",
                                                    "pseudo_negative": [image IDs], "pseudo_positive": [image IDs]}}}]}

A hand-edited or foreign file is refused in one line naming it, instead of failing inside training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmlp.inputs import id_list, require

if TYPE_CHECKING:
    from fedmlp.store import ImageStore


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _vector(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_number_or_null(v) and v is not None for v in value)


def check_artifact(data: Any, path: Path, method: str, store: ImageStore, partition: dict[str, Any]) -> dict[str, Any]:
    require(isinstance(data, dict), path, "not a pseudo-label artifact (expected a JSON object)")
    require(data.get("method") == method, path, f"made for method {data.get('method')!r}, not {method!r}")
    classes = id_list(data.get("classes"), path, "classes")
    require(classes == store.classes, path, f"classes {classes} do not match the store's {store.classes}")
    degrees, prototypes = data.get("global_learning_degree"), data.get("global_prototypes")
    require(isinstance(degrees, dict) and all(_number_or_null(degrees.get(c)) and c in degrees for c in classes), path,
            "global_learning_degree: expected a number or null per class")
    prior = data.get("global_prior", {c: 0.5 for c in classes})
    require(isinstance(prior, dict) and all(_number_or_null(prior.get(c)) and prior.get(c) is not None and 0 < prior[c] < 1
                                            for c in classes), path, "global_prior: expected a number in (0, 1) per class")
    require(isinstance(prototypes, dict) and all(isinstance(prototypes.get(c), dict) for c in classes), path,
            "global_prototypes: expected negative and positive per class")
    vectors = [prototypes[c].get(side) for c in classes for side in ("negative", "positive")]
    require(all(v is None or _vector(v) for v in vectors), path, "global_prototypes: expected lists of finite numbers or null")
    require(len({len(v) for v in vectors if v is not None}) <= 1, path, "global_prototypes: vectors of different lengths")
    clients = data.get("clients")
    require(isinstance(clients, list), path, "clients: expected a list")
    entries = {c.get("id"): c for c in clients if isinstance(c, dict)}
    for client in partition["clients"]:
        entry = entries.get(client["id"])
        require(isinstance(entry, dict) and isinstance(entry.get("classes"), dict), path, f"no entry for client {client['id']}")
        _check_client(entry["classes"], path, client, classes)
    return data


def _check_client(entry: dict[str, Any], path: Path, client: dict[str, Any], classes: list[str]) -> None:
    cid, images = client["id"], set(client["images"])
    for name, info in entry.items():
        require(name in classes and name not in client["annotated_classes"], path,
                f"client {cid}: {name!r} is not one of its missing classes")
        require(isinstance(info, dict) and all(k in info for k in ("learning_degree", "tau0", "tau1", "pseudo_negative", "pseudo_positive")),
                path, f"client {cid}, class {name}: expected learning_degree, tau0, tau1, pseudo_negative and pseudo_positive")
        require(all(_number_or_null(info[k]) for k in ("learning_degree", "tau0", "tau1")), path,
                f"client {cid}, class {name}: learning_degree, tau0 and tau1 must be numbers or null")
        require((info["tau0"] is None) == (info["tau1"] is None), path, f"client {cid}, class {name}: tau0 and tau1 go together")
        negative = id_list(info["pseudo_negative"], path, f"client {cid}, class {name}: pseudo_negative", allow_empty=True)
        positive = id_list(info["pseudo_positive"], path, f"client {cid}, class {name}: pseudo_positive", allow_empty=True)
        foreign = next((i for i in negative + positive if i not in images), None)
        require(foreign is None, path, f"client {cid}, class {name}: image {foreign!r} is not one of the client's")
        both = set(negative) & set(positive)
        require(not both, path, f"client {cid}, class {name}: image {min(both) if both else ''!r} is both a pseudo-negative and a pseudo-positive")

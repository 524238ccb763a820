"""The federation settings of one experiment, by name: the ``federation`` section, or one family per
entry of ``sweep`` (each entry overrides some of ``federation``'s keys).

A setting's name says its partition shape, its clients and how many classes each client annotates
(``iid-k5-a1``, ``dir0.5-k5-a2``); without ``-a{n}`` it is its family (``iid-k5``), which the report
shows as one table with a column per missing rate. The names do not depend on where a setting came
from, so the default run's ``iid-k5-a1`` is the same runs as a sweep's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fedmlp.errors import FedmlpError

_ANNOTATED = re.compile(r"(?P<family>.+)-a(?P<annotated>[0-9]+)")


@dataclass(frozen=True)
class Setting:
    name: str
    federation: dict[str, Any]  # the federation section of this setting (one annotated_per_client)
    source: str  # the config key it comes from: "federation" or "sweep[i]"
    overrides: tuple[str, ...] = ()  # keys the sweep entry sets (the rest come from federation)

    def key(self, name: str) -> str:
        """The config key that set ``name`` for this setting, for error messages."""
        return f"{self.source}.{name}" if name in self.overrides else f"federation.{name}"


def setting_name(federation: dict[str, Any]) -> str:
    """The name of a setting whose annotated_per_client is one value; ``site``: the sites name the clients."""
    if federation["partition"] == "site":
        return "site"
    shape = "iid" if federation["partition"] == "iid" else f"dir{federation['dirichlet_alpha']:g}"
    if federation["annotated_classes"] is not None:
        listed = hashlib.sha256(json.dumps(federation["annotated_classes"]).encode()).hexdigest()[:6]
        return f"{shape}-k{federation['n_clients']}-listed{listed}"
    return f"{shape}-k{federation['n_clients']}-a{federation['annotated_per_client']}"


def split_name(name: str) -> tuple[str, int | None]:
    """A setting's family and annotated classes per client (None for listed classes)."""
    match = _ANNOTATED.fullmatch(name)
    return (match["family"], int(match["annotated"])) if match else (name, None)


def _expand(federation: dict[str, Any], source: str, overrides: tuple[str, ...]) -> list[Setting]:
    per_client = federation["annotated_per_client"]
    values = per_client if isinstance(per_client, list) else [per_client]
    if federation["annotated_classes"] is not None or federation["partition"] == "site":
        values = values[-1:]  # explicit lists (or the sites' own classes) override annotated_per_client: one setting
    out = []
    for value in values:
        fed = {**federation, "annotated_per_client": value}
        out.append(Setting(setting_name(fed), fed, source, overrides))
    return out


def federation_settings(config: dict[str, Any]) -> list[Setting]:
    """Every setting of the (validated, default-filled) config, in config order. Two that would share
    a name are refused: their runs would be one directory."""
    federation, sweep = config["federation"], config.get("sweep")
    if sweep is None:
        settings = _expand(federation, "federation", ())
    else:
        settings = [s for i, entry in enumerate(sweep) for s in _expand({**federation, **entry}, f"sweep[{i}]", tuple(entry))]
    seen: dict[str, Setting] = {}
    for setting in settings:
        if setting.name in seen:
            first = seen[setting.name]
            raise FedmlpError(f"config key '{setting.source}': setting {setting.name} again (first from {first.source}); "
                              "settings are named by partition, clients and annotated classes, so each may come once")
        seen[setting.name] = setting
    return settings

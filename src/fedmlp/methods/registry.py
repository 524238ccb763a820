"""The one list of methods: each method module registers its names here, with its config section.

Everything else that needs the method list (the workflow schema's enum and per-method sections, the
staged methods, the code fingerprint of a method's jobs, the CLI) asks this registry, so adding a
method is one new module under ``fedmlp/methods/`` and nothing else. :func:`load_all` imports every
such module; it is found by listing the package, not by a list kept by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedmlp.errors import FedmlpError

if TYPE_CHECKING:
    from fedmlp.methods.base import Method

Factory = Callable[[dict[str, Any]], "Method"]

# Modules of the package that define the interface, not a method.
INFRASTRUCTURE = {"base", "registry", "messages", "common"}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Factory
    module: str  # the defining module, e.g. "fedmlp.methods.rscfed" (its code fingerprints the method's jobs)
    section: str | None  # the config section holding its settings (None: it has none)
    config: type | None  # the dataclass of that section
    staged: bool  # trained in the workflow's warmup → pseudolabel → teacher stages (see base.StagedMethod)
    summary: str  # one line for tables and --help
    display: str  # the name figures, tables and the report print (the id where none is given)


_SPECS: dict[str, MethodSpec] = {}


def register(name: str, *, section: str | None = None, config: type | None = None, staged: bool = False,
             summary: str = "", display: str = "") -> Callable[[Factory], Factory]:
    def decorate(factory: Factory) -> Factory:
        if name in _SPECS:
            raise ValueError(f"method {name!r} registered twice")
        _SPECS[name] = MethodSpec(name, factory, factory.__module__, section, config, staged, summary, display or name)
        return factory

    return decorate


def load_all() -> None:
    """Import every method module of this package (each registers itself)."""
    package = importlib.import_module("fedmlp.methods")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in INFRASTRUCTURE and not info.name.startswith("_"):
            importlib.import_module(f"fedmlp.methods.{info.name}")


def specs() -> dict[str, MethodSpec]:
    load_all()
    return dict(sorted(_SPECS.items()))


def names() -> list[str]:
    return list(specs())


def spec(name: str) -> MethodSpec:
    known = specs()
    if name not in known:
        raise FedmlpError(f"config key 'methods': unknown method {name!r} (available: {', '.join(known)})")
    return known[name]


def display_name(name: str) -> str:
    """What a figure or table prints for method ``name``; an unregistered name (an old run's) as it is."""
    known = specs()
    return known[name].display if name in known else name


def sections() -> dict[str, type]:
    """Config section → its dataclass, over all methods (variants of one method share a section)."""
    return {s.section: s.config for s in specs().values() if s.section is not None and s.config is not None}


def create(name: str, settings: dict[str, Any] | None = None) -> Method:
    return spec(name).factory(settings or {})

"""Name → factory for methods. A new method registers itself; the loop never lists names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedmlp.errors import FedmlpError

if TYPE_CHECKING:
    from fedmlp.methods.base import Method

Factory = Callable[[dict[str, Any]], "Method"]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def decorate(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"method {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


def names() -> list[str]:
    return sorted(_FACTORIES)


def create(name: str, settings: dict[str, Any] | None = None) -> Method:
    if name not in _FACTORIES:
        raise FedmlpError(f"config key 'methods': unknown method {name!r} (available: {', '.join(names())})")
    return _FACTORIES[name](settings or {})

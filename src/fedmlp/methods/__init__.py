"""Federated methods. Importing this package registers all of them."""

from fedmlp.methods import fedavg, fedmlp  # noqa: F401  (importing registers them)
from fedmlp.methods.base import ClientUpdate, LocalContext, Method, RoundContext, weighted_average
from fedmlp.methods.registry import create, names, register

__all__ = ["ClientUpdate", "LocalContext", "Method", "RoundContext", "create", "names", "register", "weighted_average"]

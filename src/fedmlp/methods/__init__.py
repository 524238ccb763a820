"""Federated methods. Importing this package registers all of them."""

from fedmlp.methods import fedavg  # noqa: F401  (registers the FedAvg reference points)
from fedmlp.methods.base import ClientUpdate, LocalContext, Method, weighted_average
from fedmlp.methods.registry import create, names, register

__all__ = ["ClientUpdate", "LocalContext", "Method", "create", "names", "register", "weighted_average"]

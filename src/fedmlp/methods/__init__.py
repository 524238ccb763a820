"""Federated methods: the interface (:mod:`.base`, :mod:`.messages`) and one module per method.

Every other module of this package is a method and registers itself (:mod:`.registry`); they are
imported by :func:`fedmlp.methods.registry.load_all`, never listed here.
"""

from fedmlp.methods.base import LocalContext, Method, ServerContext, StagedMethod, broadcast_of, weighted_average
from fedmlp.methods.messages import Broadcast, Upload, Weights
from fedmlp.methods.registry import create, names, register, spec, specs

__all__ = ["Broadcast", "LocalContext", "Method", "ServerContext", "StagedMethod", "Upload", "Weights", "broadcast_of",
           "create", "names", "register", "spec", "specs", "weighted_average"]

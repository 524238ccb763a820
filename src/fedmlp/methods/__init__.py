"""Federated methods: the interface (:mod:`.base`, :mod:`.messages`), the list (:mod:`.registry`)
and one module per method.

Every other module of this package is a method and registers itself (:mod:`.registry`); they are
imported by :func:`fedmlp.methods.registry.load_all`, never listed here. This file imports nothing:
importing any module of the package runs it first, so an import here would pull the training code
(:mod:`.base` and through it the models and augmentation) into whatever imports the registry or
the messages (and, through the code fingerprints, into those rules' code, :mod:`fedmlp.fingerprint`).
"""

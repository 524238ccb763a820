"""fedmlp: federated multi-label medical image classification with missing classes (FedMLP, MICCAI 2024)."""

__version__ = "0.1.0"

"""Checks of a run's gate log (fedmlp.federated.gate_rows), shared by the method tests."""

from __future__ import annotations

from collections import Counter

from fedmlp.federated import GATE_FIELDS, RunResult


def client_rates(result: RunResult, gate: str, rounds: list[int], clients: list[int]) -> dict[tuple[int, int], float]:
    """Assert that ``gate`` logged exactly one rate in [0, 1] per client in each of ``rounds`` (and in
    no other round); return them by (round, client)."""
    rows = [r for r in result.gates if r["gate"] == gate]
    assert rows, f"no {gate!r} rates logged"
    assert all(set(r) == set(GATE_FIELDS) and r["side"] == "client" and 0 <= r["rate"] <= 1 for r in rows)
    counts = Counter((r["round"], r["unit"]) for r in rows)
    assert counts == Counter({(n, c): 1 for n in rounds for c in clients})
    return {(r["round"], r["unit"]): r["rate"] for r in rows}


def client_ids(federation: dict) -> list[int]:
    return [c["id"] for c in federation["clients"]]

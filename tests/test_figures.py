"""What the report's figures draw: every method's curve through its scored rounds, every method its
own look, and the files a paper needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.lines import Line2D

from fedmlp.figures import look, plot_rounds, rounds_figure
from fedmlp.methods import registry

ROUNDS = list(range(1, 11))
SCORED = [r for r in ROUNDS if r % 2 == 0]  # train.eval_every: 2


def runs(methods: list[str], settings: tuple[str, ...] = ("iid-k5-a1", "dir0.5-k5-a1"), seeds: int = 3) -> list[dict]:
    out = []
    for setting in settings:
        for m, method in enumerate(methods):
            for seed in range(seeds):
                scores = [0.3 + 0.02 * r + 0.01 * m + 0.005 * seed if r in SCORED else float("nan") for r in ROUNDS]
                out.append({"run": {"dataset": "synthetic-ich", "setting": setting, "method": method, "seed": seed},
                            "rounds": {"round": ROUNDS, "test_mAP": scores}})
    return out


def method_lines(ax) -> dict[str, Line2D]:
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def test_every_method_is_drawn_through_its_scored_rounds_in_every_panel() -> None:
    methods = registry.names()
    fig = rounds_figure(runs(methods))
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["synthetic-ich · dir0.5-k5-a1", "synthetic-ich · iid-k5-a1"]
    for ax in panels:
        lines = method_lines(ax)
        assert set(lines) == set(methods)
        for m, method in enumerate(methods):
            x, y = (np.asarray(v, dtype=float) for v in lines[method].get_data())
            assert list(x) == SCORED  # a point at every scored round, nothing at the others
            assert np.all(np.isfinite(y))  # a NaN would break the line into invisible pieces
            expected = [0.3 + 0.02 * r + 0.01 * m + 0.005 for r in SCORED]  # the mean over seeds 0, 1, 2
            assert np.allclose(y, expected)
            assert lines[method].get_marker() not in (None, "None", "")
        assert ax.get_xlabel() == "communication round"
    assert panels[0].get_ylabel() == "test mAP"
    legend = {text.get_text() for text in fig.legends[0].get_texts()}
    assert {f"{registry.display_name(m)} (n=3)" for m in methods} == legend


def test_every_registered_method_has_its_own_look_and_name() -> None:
    methods = registry.names()
    looks = [look(m) for m in methods]
    assert len({(s.color, s.linestyle, s.marker) for s in looks}) == len(methods)
    assert len({s.label for s in looks}) == len(methods)
    assert look("fedmlp").label == "FedMLP" and look("no-such-method").label == "no-such-method"


def test_a_method_never_scored_is_left_out_and_the_rest_drawn() -> None:
    data = runs(["fedavg-masked", "fedmlp"], settings=("iid-k5-a1",), seeds=1)
    for run in data:
        if run["run"]["method"] == "fedmlp":
            run["rounds"]["test_mAP"] = [float("nan")] * len(ROUNDS)
    lines = method_lines(rounds_figure(data).axes[0])
    assert set(lines) == {"fedavg-masked"}


def test_the_figure_is_written_as_png_and_svg_with_the_same_bytes_each_time(tmp_path: Path) -> None:
    path = tmp_path / "figures" / "map_per_round.png"
    path.parent.mkdir()
    plot_rounds(runs(["fedavg-masked", "fedmlp"], settings=("iid-k5-a1",)), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = path.with_suffix(".svg").read_bytes()
    assert b"<svg" in svg[:1000]
    assert sorted(p.name for p in path.parent.iterdir()) == ["map_per_round.png", "map_per_round.svg"]
    plot_rounds(runs(["fedavg-masked", "fedmlp"], settings=("iid-k5-a1",)), path)
    assert path.with_suffix(".svg").read_bytes() == svg


@pytest.mark.parametrize("n_settings", [1, 4])
def test_panels_follow_the_settings(n_settings: int) -> None:
    settings = tuple(f"iid-k5-a{i}" for i in range(1, n_settings + 1))
    fig = rounds_figure(runs(["fedavg-masked"], settings=settings, seeds=1))
    assert sum(ax.get_visible() for ax in fig.axes) == n_settings


def test_every_registered_method_names_itself_for_figures_and_tables() -> None:
    """A method registered without ``display=`` would show its id in figures and table.tex."""
    assert [s.name for s in registry.specs().values() if s.display == s.name] == []


def test_pseudo_label_quality_has_a_row_per_setting_and_a_legend_over_no_curve() -> None:
    """Each setting its own row of three rates, each method one curve per panel (the mean over seeds),
    and the legend below the panels, where it hides nothing (the sweep's 6 settings made it unreadable)."""
    import pandas as pd

    from fedmlp.figures import PSEUDO_LABEL_PANELS, pseudolabels_figure

    settings, methods = ["iid-k5-a1", "iid-k5-a2", "dir0.5-k5-a1"], ["fedmlp", "fedmlp-fixed"]
    rows = [{"setting": setting, "method": method, "seed": seed, "round": r,
             **{column: 0.1 * (k + 1) + 0.01 * r + 0.1 * m + 0.02 * seed for k, (column, _) in enumerate(PSEUDO_LABEL_PANELS)}}
            for setting in settings for m, method in enumerate(methods) for seed in range(3) for r in (9, 10, 11)]
    fig = pseudolabels_figure(pd.DataFrame(rows))
    assert len(fig.axes) == 9
    assert [ax.get_title() for ax in fig.axes[:3]] == [f"{title} · iid-k5-a1" for _, title in PSEUDO_LABEL_PANELS]
    assert fig.axes[6].get_title().endswith("· dir0.5-k5-a1")
    for k, ax in enumerate(fig.axes):
        lines = method_lines(ax)
        assert set(lines) == set(methods)
        x, y = lines["fedmlp-fixed"].get_data()
        assert list(x) == [9, 10, 11] and np.allclose(y, [0.1 * (k % 3 + 1) + 0.01 * r + 0.1 + 0.02 for r in (9, 10, 11)])
    assert not any(ax.get_legend() for ax in fig.axes)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert {text.get_text() for text in fig.legends[0].get_texts()} == {"FedMLP", registry.display_name("fedmlp-fixed")}
    assert not any(legend.overlaps(ax.get_window_extent()) for ax in fig.axes)

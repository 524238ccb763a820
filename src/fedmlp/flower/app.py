"""The Flower app directory that ``flwr run`` packs and submits: a ``pyproject.toml`` only.

The ServerApp and ClientApp are modules of the installed ``fedmlp`` package, so the app carries no
code: every machine of the federation (the SuperLink's and each SuperNode's) must have the same
``fedmlp`` (and ``flwr``) installed. Run-time dependency installation stays off.
"""

from __future__ import annotations

from pathlib import Path

from fedmlp.flower.job import DEFAULTS

SERVER_APP = "fedmlp.flower.server_app:app"
CLIENT_APP = "fedmlp.flower.client_app:app"


def pyproject(server_app: str = SERVER_APP, client_app: str = CLIENT_APP) -> str:
    import tomli_w

    from fedmlp import __version__

    return tomli_w.dumps({
        "project": {"name": "fedmlp-flower", "version": __version__, "description": "fedmlp methods across sites",
                    "license": "MIT", "dependencies": []},
        "tool": {"flwr": {"app": {"publisher": "fedmlp", "components": {"serverapp": server_app, "clientapp": client_app},
                                  "config": dict(DEFAULTS)}}},
    })


def write_app(directory: Path, server_app: str = SERVER_APP, client_app: str = CLIENT_APP,
              extra_files: dict[str, str] | None = None) -> Path:
    """Write the app into ``directory`` (``extra_files``: more modules to ship in it, e.g. a test's ClientApp)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(pyproject(server_app, client_app))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)
    return directory

"""requirements-lock.txt: every dependency pinned (torch & co. left to TORCH_SPEC), consistent with
pyproject.toml, and, in CI, the very environment that `make test` runs in."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = REPO / "requirements-lock.txt"
NOT_LOCKED = re.compile(r"(torch|torchvision|triton|nvidia-[a-z0-9.-]+|cuda-[a-z0-9.-]+)")  # as in scripts/lock, normalised


def locked() -> dict[str, str]:
    """Normalised name → version; every line that is not a comment is ``name==version``."""
    pins = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{LOCK.name}:{number}: {line!r} is not name==version"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{LOCK.name}:{number}: {name} twice"
        pins[name] = match[2]
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + sum(project["optional-dependencies"].values(), [])]


def test_lock_pins_what_pyproject_asks_for_and_no_torch() -> None:
    """A dependency added to pyproject.toml without `make lock` fails here, naming it."""
    pins = locked()
    assert not [name for name in pins if NOT_LOCKED.fullmatch(name)], "torch & co. belong to TORCH_SPEC"
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if NOT_LOCKED.fullmatch(name):
            continue
        assert name in pins, f"{requirement} is in pyproject.toml but not in {LOCK.name}: run make lock"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), \
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject.toml's {requirement}: run make lock"


def test_lock_is_closed_under_the_installed_requirements() -> None:
    """Each locked package installed here at its locked version needs only locked packages (or torch & co.)."""
    pins = locked()
    missing = set()
    for name, version in pins.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            needed = canonicalize_name(requirement.name)
            if needed not in pins and not NOT_LOCKED.fullmatch(needed):
                missing.add(f"{needed} (for {name})")
    assert not missing, f"not in {LOCK.name}: {', '.join(sorted(missing))}"


@pytest.mark.skipif(os.environ.get("FEDMLP_REQUIRE_LOCK") != "1", reason="FEDMLP_REQUIRE_LOCK=1 (CI): this environment was installed by make from the lock")
def test_this_environment_is_the_lock() -> None:
    """`make test` installed exactly the lock: pip freeze, less torch & co., is the lock line for line."""
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    installed = {canonicalize_name(n): v for n, v in re.findall(r"(?m)^([A-Za-z0-9._-]+)==(\S+)$", freeze)}
    installed = {n: v for n, v in installed.items() if not NOT_LOCKED.fullmatch(n)}
    pins = locked()
    differ = sorted(f"{n}: installed {installed.get(n)}, locked {pins.get(n)}" for n in set(installed) | set(pins) if installed.get(n) != pins.get(n))
    assert not differ, "; ".join(differ)

"""constraints.txt pins every dependency of every extra, and this environment was installed from it."""

from __future__ import annotations

import configparser
import importlib.metadata as md
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
REFRESH = "refresh the pins with .ci/pin (docs/operations.md, 'Dependencies')"


def pins() -> dict[str, str]:
    """name -> exact version, as constraints.txt records them."""
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = version
    return out


def declared() -> list[Requirement]:
    """hms's own requirements and those of every extra, from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(s) for s in (ln.split("#")[0].strip() for ln in lines) if s]


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the declared requirements pull in (markers evaluated, extras followed)."""
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:  # an extra this environment did not install (prod): its name still counts
            continue
        for text in requires:
            dep = Requirement(text)
            env_extras = extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in env_extras):
                todo.append((dep, frozenset(dep.extras)))
    return {k.split("[")[0] for k in seen}


def installed(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def test_every_dependency_of_every_extra_is_pinned() -> None:
    pinned = pins()
    missing = sorted(closure(declared()) - set(pinned))
    assert not missing, f"not pinned in constraints.txt: {', '.join(missing)}; {REFRESH}"


def test_installed_versions_are_the_pinned_ones() -> None:
    pinned = pins()
    wrong = sorted(
        f"{name} {md.version(name)} (pinned {pinned[name]})"
        for name in closure(declared())
        if name in pinned and installed(name) not in (None, pinned[name])
    )
    assert not wrong, f"installed without the pins: {', '.join(wrong)}; pip install -c constraints.txt -e '.[test]'"


def test_pins_satisfy_the_declared_ranges() -> None:
    pinned = pins()
    outside = [
        f"{r} (pinned {pinned[canonicalize_name(r.name)]})"
        for r in declared()
        if not r.specifier.contains(pinned[canonicalize_name(r.name)])
    ]
    assert not outside, f"pins outside setup.cfg's ranges: {', '.join(outside)}; {REFRESH}"

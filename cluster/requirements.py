"""Print the project's requirements from pyproject.toml, one per line, for ``pip install -r``.

    python cluster/requirements.py [--extra NAME ...] [--without NAME ... | --only NAME ...]
                                   [--pyproject FILE]

The dependencies of ``[project]`` and of the named extras, less the distributions named by
``--without`` (or only those named by ``--only``). The Makefile's CPU install uses it to install everything but sam2, which it installs
afterwards without sam2's declared torchvision requirement; the cluster image uses it to install
the dependencies in a layer of their own, before the project's code. Standard library only: it
runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: ``Hydra_Core`` and ``hydra-core`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The canonical distribution name of a requirement string (``Ray[data]>=2`` → ``ray``)."""
    return canonical_name(_NAME.match(requirement).group())


def requirements(
    pyproject: Path, *, extras: list[str] = (), without: list[str] = (), only: list[str] = ()
) -> list[str]:
    """The requirement strings, in file order; an unknown extra, or a name in ``without`` or
    ``only`` that is not a requirement, is an error."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra named {', '.join(unknown)} (extras: {', '.join(optional)})")
    found = [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]
    names = [requirement_name(r) for r in found]
    skipped, kept = ({canonical_name(n) for n in names_} for names_ in (without, only))
    missing = (skipped | kept) - set(names)
    if missing:
        raise SystemExit(f"{pyproject}: {', '.join(sorted(missing))}: not a requirement of the project")
    return [r for r, n in zip(found, names) if n not in skipped and (not kept or n in kept)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="also the requirements of this extra")
    parser.add_argument("--without", action="append", default=[], help="leave this distribution out")
    parser.add_argument("--only", action="append", default=[], help="only this distribution")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    if args.without and args.only:
        parser.error("--without and --only exclude each other")
    reqs = requirements(args.pyproject, extras=args.extra, without=args.without, only=args.only)
    sys.stdout.write("".join(f"{r}\n" for r in reqs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A CPU stand-in for the GPU machine's Python environment, to rehearse the GPU run kit here.

    python benchmarks/gpu/mimic.py venv DEST         # DEST/bin/python sees only the device's packages
    python benchmarks/gpu/mimic.py link-kit TARGET   # the kit's packages (wheels.txt), linked into TARGET

`venv` makes a virtual environment (nothing downloaded) whose site-packages holds links to those
distributions of the interpreter running this script that the GPU machine also has
(device_packages.txt): a package the kit forgot to carry is then missing here as it would be there.
Versions are this interpreter's unless `--overlay DIR` gives wheels of the device's own releases
(download_wheels.py --rehearsal fetches the pure-Python ones whose versions differ: the Hugging Face
stack), which are installed over the links. A dependency that a linked distribution needs in the
version installed here but that the device does not list (huggingface-hub 2.x needs httpx2, where the
device's 1.33 needs httpx) is linked too and reported: the device's own releases do not need it.

`link-kit` stands in for the wheel install when no wheels were downloaded (.whl/ absent, as in CI): it
links the distributions that wheels.txt names from this interpreter into TARGET, the folder the kit
installs the wheels into, so the entry command still runs on exactly the device's packages plus the
kit's. Run this script with the interpreter whose packages are to be used (the project's .venv).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
DEVICE_PACKAGES = HERE / "device_packages.txt"
WHEELS = HERE / "wheels.txt"


def normalize(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[dict]:
    """`name==version [flag ...]  # comment` lines: [{"name", "version", "flags"}]."""
    entries = []
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        name, _, version = fields[0].partition("==")
        entries.append({"name": name, "version": version or None, "flags": fields[1:]})
    return entries


def site_dirs() -> list[Path]:
    """This interpreter's own site-packages folders (not PYTHONPATH's)."""
    dirs = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    return [Path(d).resolve() for d in dirs if Path(d).is_dir()]


def installed() -> dict[str, metadata.Distribution]:
    """Distributions in this interpreter's site-packages, by normalized name (the first one on the path wins)."""
    found = {}
    for directory in site_dirs():
        for dist in metadata.distributions(path=[str(directory)]):
            name = dist.metadata["Name"]
            if name:
                found.setdefault(normalize(name), dist)
    return found


def entries(dist: metadata.Distribution) -> dict[str, set[str]]:
    """The distribution's top-level names in its site-packages folder, each with the second-level
    names it installs under it ({"torch": {...}, "torch-2.1.dist-info": {...}, "six.py": set()})."""
    tops: dict[str, set[str]] = {}
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].startswith("__editable__"):
            continue
        tops.setdefault(parts[0], set())
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].endswith(".pyc")):
            tops[parts[0]].add(parts[1])
    if not tops:  # no RECORD: its dist-info folder and top_level.txt
        info = Path(str(dist._path))  # noqa: SLF001 - the only handle on a RECORD-less distribution
        tops[info.name] = set()
        for name in (dist.read_text("top_level.txt") or "").split():
            tops.setdefault(name, set())
            tops.setdefault(f"{name}.py", set())
    return tops


def link(dists: dict[str, metadata.Distribution], wanted: set[str], dest: Path) -> list[str]:
    """Link the top-level entries of the `wanted` distributions into `dest`. A top-level folder that
    other distributions share (a namespace package such as `nvidia`) becomes a real folder holding
    links to the wanted distributions' own entries only. Returns the names linked."""
    dest.mkdir(parents=True, exist_ok=True)
    owners: dict[str, list[str]] = {}
    layout = {name: entries(dist) for name, dist in dists.items()}
    for name, tops in layout.items():
        for top in tops:
            owners.setdefault(top, []).append(name)
    linked = []
    for name in sorted(wanted & dists.keys()):
        root = Path(str(dists[name].locate_file("")))
        for top, children in layout[name].items():
            source = root / top
            if not source.exists() and not source.is_symlink():
                continue
            if len(owners[top]) == 1 or not source.is_dir():
                target = dest / top
                if not target.exists() and not target.is_symlink():
                    target.symlink_to(source)
                continue
            (dest / top).mkdir(exist_ok=True)
            for child in children:
                target = dest / top / child
                if (root / top / child).exists() and not target.exists() and not target.is_symlink():
                    target.symlink_to(root / top / child)
        linked.append(name)
    return linked


def make_venv(dest: Path) -> Path:
    """A fresh, empty virtual environment; returns its site-packages."""
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(dest)
    purelib = sysconfig.get_path("purelib", vars={"base": str(dest), "platbase": str(dest)})
    return Path(purelib)


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-", 1)[0])


def install_overlay(wheels: list[Path], site_packages: Path) -> None:
    """Install wheels of the device's releases into the mimic's site-packages (no dependencies, offline)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--disable-pip-version-check", "--upgrade", "--target", str(site_packages),
                    *map(str, wheels)], check=True)


def unmet_requirements(site_packages: Path) -> set[str]:
    """Names that the distributions in `site_packages` require (markers evaluated here, no extras) and
    that are not in it."""
    from packaging.requirements import Requirement

    present = {normalize(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site_packages)])
               if d.metadata["Name"]}
    unmet = set()
    for dist in present.values():
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if normalize(requirement.name) not in present:
                unmet.add(normalize(requirement.name))
    return unmet


def build_mimic(dest: Path, packages: Path, overlay: Path | None) -> dict:
    """The mimic environment: device packages linked, device-release overlay installed, dependencies of
    the versions installed here that the device does not list linked last. Returns what it did."""
    dists = installed()
    wanted = {normalize(e["name"]) for e in read_requirements(packages)}
    wheels = sorted(overlay.glob("*.whl")) if overlay is not None and overlay.is_dir() else []
    overlaid = {wheel_name(w) for w in wheels}
    site_packages = make_venv(dest)
    linked = link(dists, wanted - overlaid, site_packages)
    if wheels:
        install_overlay(wheels, site_packages)
    extra: list[str] = []
    while True:  # dependencies of the versions installed here that the device lacks
        more = (unmet_requirements(site_packages) & dists.keys()) - set(extra)
        if not more:
            break
        extra += link(dists, more, site_packages)
    return {"python": str(dest / "bin" / "python"), "site_packages": str(site_packages), "linked": linked,
            "overlay": [w.name for w in wheels], "extra_dependencies": sorted(extra),
            "hidden": sorted(set(dists) - set(linked) - set(extra) - overlaid),
            "unmet": sorted(unmet_requirements(site_packages))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("venv", help="a virtual environment with the device's packages only")
    make.add_argument("dest", type=Path)
    make.add_argument("--packages", type=Path, default=DEVICE_PACKAGES)
    make.add_argument("--overlay", type=Path, default=None, help="wheels of the device's releases to install over")
    kit = sub.add_parser("link-kit", help="link the kit's packages (wheels.txt) into a target folder")
    kit.add_argument("target", type=Path)
    kit.add_argument("--wheels", type=Path, default=WHEELS)
    args = parser.parse_args(argv)

    if args.command == "venv":
        made = build_mimic(args.dest, args.packages, args.overlay)
        print(f"mimic venv {args.dest}: {len(made['linked'])} distributions linked from {sys.prefix} (the device "
              f"has them too); device releases installed over them: {' '.join(made['overlay']) or 'none'}; "
              f"linked as dependencies of the versions here, not on the device: "
              f"{' '.join(made['extra_dependencies']) or 'none'}; hidden (not on the device): {' '.join(made['hidden'])}"
              + (f"; required but absent: {' '.join(made['unmet'])}" if made["unmet"] else ""))
        print(made["python"])
        return 0
    dists = installed()
    kit_names = {normalize(e["name"]) for e in read_requirements(args.wheels)}
    linked = link(dists, kit_names, args.target)
    missing = sorted(kit_names - set(linked))
    print(f"linked {len(linked)} kit distribution(s) from {sys.prefix} into {args.target}: {' '.join(linked)}"
          + (f"; not installed here, so absent: {' '.join(missing)}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download, once, the wheels the GPU run kit carries to the GPU machine (benchmarks/gpu/README.md).

    python benchmarks/gpu/download_wheels.py                 # wheels.txt -> .whl/ (Python 3.12, manylinux x86_64)
    python benchmarks/gpu/download_wheels.py --with-optional # also the optional ones (av: 34 MiB)
    python benchmarks/gpu/download_wheels.py --rehearsal     # also the device's own Hugging Face releases,
                                                             # pure Python, for the CPU rehearsal: .rehearsal/wheels/
    python benchmarks/gpu/download_wheels.py --check         # offline: what .whl/ holds, its needs, its size

Each package of wheels.txt is fetched with `pip download --no-deps --only-binary=:all:` for CPython 3.12
on manylinux x86_64, the device's platform; one marked `build` (PyPI has only its sdist) is built here
with `pip wheel --no-deps` and must come out pure Python. Wheels in the folder that wheels.txt no longer
names (or names at another version) are removed: the device installs `.whl/*.whl`, and two versions of
one package stop that install. The check reads every wheel's Requires-Dist (markers evaluated for
Python 3.12 on Linux x86_64, extras left out) and fails when one is neither on the device
(device_packages.txt, with its version where the list gives one) nor among the wheels.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata as metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from mimic import DEVICE_PACKAGES, WHEELS, normalize, read_requirements  # noqa: E402

DEST = REPO / ".whl"
REHEARSAL_DEST = REPO / ".rehearsal" / "wheels"
# The device's releases (device_packages.txt) worth installing over this machine's in the rehearsal:
# pure Python, and the stack the harness leans on whose API moves between releases.
REHEARSAL_OVERLAY = ("huggingface-hub", "transformers")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
SIZE_WARNING_MIB = 40  # the working tree that travels is at most 64 MiB, the repository included


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"], check=True)


def download(spec: str, dest: Path) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *platforms, "-d", str(dest), spec)


def build(spec: str, dest: Path) -> None:
    """A wheel built here from the sdist; it must be pure Python (it is built by this interpreter)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip("wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", tmp, spec)
        (wheel,) = Path(tmp).glob("*.whl")
        if not wheel.name.endswith("-py3-none-any.whl") and not wheel.name.endswith("-py2.py3-none-any.whl"):
            raise SystemExit(f"{wheel.name}: built here, but not pure Python: it would not run on the device")
        wheel.replace(dest / wheel.name)


def wheel_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalize(name), version


def entries_wanted(with_optional: bool) -> list[dict]:
    return [e for e in read_requirements(WHEELS) if with_optional or "optional" not in e["flags"]]


def fetch(dest: Path, with_optional: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {normalize(e["name"]): e["version"] for e in entries_wanted(with_optional)}
    for wheel in dest.glob("*.whl"):
        name, version = wheel_version(wheel)
        if wanted.get(name) != version:
            print(f"removing {wheel.name}: not in wheels.txt at this version")
            wheel.unlink()
    have = {wheel_version(w)[0] for w in dest.glob("*.whl")}
    for entry in entries_wanted(with_optional):
        if normalize(entry["name"]) in have:
            continue
        spec = f"{entry['name']}=={entry['version']}"
        print(f"{'building' if 'build' in entry['flags'] else 'downloading'} {spec}", flush=True)
        (build if "build" in entry["flags"] else download)(spec, dest)


def fetch_rehearsal(dest: Path) -> None:
    """The device's releases of REHEARSAL_OVERLAY, where they differ from this interpreter's."""
    dest.mkdir(parents=True, exist_ok=True)
    device = {normalize(e["name"]): e["version"] for e in read_requirements(DEVICE_PACKAGES)}
    for name in REHEARSAL_OVERLAY:
        version = device.get(name)
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            here = None
        if version is None or here == version:
            continue
        if any(wheel_version(w) == (name, version) for w in dest.glob("*.whl")):
            continue
        print(f"downloading {name}=={version} (the device's; {here} here) for the rehearsal", flush=True)
        pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest), f"{name}=={version}")
    for wheel in dest.glob("*.whl"):
        if not wheel.name.endswith("none-any.whl"):
            raise SystemExit(f"{wheel.name}: the rehearsal overlay must be pure Python")


def wheel_requirements(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(archive.read(name).decode())
    return message.get_all("Requires-Dist") or []


def unmet(requirements: dict[str, list[str]], carried: dict[str, str]) -> list[str]:
    """Requirements (by requiring package) that neither the device nor the carried packages satisfy."""
    device = {normalize(e["name"]): e["version"] for e in read_requirements(DEVICE_PACKAGES)}
    problems = []
    for owner, lines in requirements.items():
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(DEVICE_MARKERS):
                continue
            name = normalize(requirement.name)
            version = carried.get(name) or device.get(name)
            if name not in carried and name not in device:
                problems.append(f"{owner} needs {line}: not on the device and not carried")
            elif version and not requirement.specifier.contains(Version(version), prereleases=True):
                where = "carried" if name in carried else "on the device"
                problems.append(f"{owner} needs {line}: {version} {where}")
    return problems


def check(dest: Path) -> int:
    """Offline: one wheel per entry at its pinned version (an optional one may be absent), every need
    met, the size. 0 when all is well."""
    wheels = sorted(dest.glob("*.whl"))
    found = {wheel_version(w)[0]: (wheel_version(w)[1], w) for w in wheels}
    problems = []
    for entry in read_requirements(WHEELS):
        name = normalize(entry["name"])
        if name not in found:
            if "optional" not in entry["flags"]:
                problems.append(f"missing: {entry['name']}=={entry['version']}")
        elif found[name][0] != entry["version"]:
            problems.append(f"{entry['name']}: {found[name][0]} in {dest}, wheels.txt pins {entry['version']}")
    names = [wheel_version(w)[0] for w in wheels]
    problems += [f"two wheels of {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += unmet({w.name: wheel_requirements(w) for w in wheels}, {n: v for n, (v, _) in found.items()})
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:8.2f} MiB  in all, {len(wheels)} wheels in {dest}")
    if total / 2**20 > SIZE_WARNING_MIB:
        print(f"warning: over {SIZE_WARNING_MIB} MiB; the working tree that travels is at most 64 MiB")
    for problem in problems:
        print(f"problem: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    parser.add_argument("--with-optional", action="store_true", help="also the packages marked optional")
    parser.add_argument("--rehearsal", action="store_true",
                        help=f"also the device's releases of {', '.join(REHEARSAL_OVERLAY)} for the rehearsal, "
                             f"into {REHEARSAL_DEST.relative_to(REPO)}")
    parser.add_argument("--check", action="store_true", help="only check what the folder holds (offline)")
    args = parser.parse_args(argv)
    if not args.check:
        fetch(args.dest, args.with_optional)
        if args.rehearsal:
            fetch_rehearsal(REHEARSAL_DEST)
    return check(args.dest)


if __name__ == "__main__":
    sys.exit(main())

"""`semantix-weights list|verify|fetch [overrides ...]`: the weight files of a job, all at once.

The overrides are semantix-bench's (`metrics=image_style backbone=sd15 method=stylegallery`); the job's
backbone, metrics and methods are read from the composed config.

- `list`: every file, the setting that selects it, present or missing, its size, where it is looked for;
- `verify`: each present file against what is published (`known.yaml`): its sha256 (torchvision's and
  torch-fidelity's file names carry its prefix; the Hugging Face cache names each blob by the hub's
  hash), else the tensor names and shapes of its architecture; exit status 1 when one is missing or wrong;
- `fetch`: download the missing ones through their own libraries (huggingface_hub, torch.hub); offline,
  print what to copy where and exit with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from semantix.runtime import offline
from semantix.weights import WeightFile, can_download, fetch, how_to_get, job_weights, verify


def _size(file: WeightFile) -> str:
    path = file.found
    if path is None:
        return "-"
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _print_list(files: list[WeightFile]) -> None:
    for file in files:
        status = "present" if file.found else "MISSING"
        print(f"{status:8} {_size(file):>9}  {file.setting}: {file.what} [{file.source}]")
        print(f"{'':20}{file.found or file.locations[0]}")
    missing = sum(file.found is None for file in files)
    print(f"{len(files)} file(s), {missing} missing")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="semantix-weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "verify", "fetch"])
    parser.add_argument("overrides", nargs="*", help="semantix-bench overrides, e.g. metrics=image_style backbone=sd15")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from semantix.config import compose_job

    cfg, _ = compose_job(args.overrides)
    files = job_weights(cfg)
    if args.command == "list":
        _print_list(files)
        return
    if args.command == "verify":
        bad = 0
        for file in files:
            ok, detail = verify(file)
            bad += ok is False
            mark = {True: "ok", False: "FAILED", None: "present"}[ok]
            print(f"{mark:8} {file.setting}: {file.found or file.locations[0]}\n{'':9}{detail}")
        print(f"{len(files)} file(s), {bad} missing or not the published file")
        sys.exit(1 if bad else 0)
    missing = [file for file in files if file.found is None]
    failed = []
    for file in missing:
        if not can_download(file):  # offline, a path, or the host unreachable (logged once)
            failed.append(file)
            continue
        try:
            print(f"fetched  {file.setting}: {fetch(file)}")
        except Exception as e:  # noqa: BLE001 - gated, removed, connection lost: reported, the others go on
            print(f"FAILED   {file.setting}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
            failed.append(file)
    for file in failed:
        print(f"to do    {file.setting}: {how_to_get(file)}")
    print(f"{len(files)} file(s): {len(files) - len(missing)} present, {len(missing) - len(failed)} fetched, "
          f"{len(failed)} still missing" + (" (offline: SEMANTIX_OFFLINE / HF_HUB_OFFLINE)" if offline() else ""))
    sys.exit(1 if failed else 0)

"""`semantix-prep verify MANIFEST`: re-hash every file a prepared manifest names.

Every column `X` that has a companion column `X_sha256` is checked: `content`, `reference`, and
the extras of the prepared sets (`content_mask`, `reference_mask`, `frames`), with several files
per cell `;`-separated in the same order as their hashes. Reports each missing file, altered file
(sha256 differs), path outside the dataset root and malformed row; exits non-zero if there is
any. A file named by several rows is hashed once.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from semantix.data import REFERENCE_SEPARATOR, Manifest, sha256_file
from semantix.types import ManifestError, SampleError

HASH_SUFFIX = "_sha256"


@dataclass
class Report:
    files: int = 0
    problems: list[str] = field(default_factory=list)
    unhashed_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="manifest to verify (.csv or .parquet)")
    parser.add_argument("--root", type=Path, default=None, help="dataset root (default: the manifest's folder)")


def verify(manifest_path: Path, root: Path | None = None) -> Report:
    """Check every hashed file of a manifest; `ManifestError` if the manifest itself is unusable."""
    manifest = Manifest.load(manifest_path, root)
    report = Report()
    hashed = [column for column in manifest.columns if f"{column}{HASH_SUFFIX}" in manifest.columns]
    report.unhashed_columns = [column for column in ("content", "reference") if column not in hashed]
    checked: dict[str, str | None] = {}  # resolved path -> its sha256 (None: missing)
    for sample_id in tqdm(manifest.sample_ids, desc="verify", unit="sample", disable=None):
        row = manifest.row(sample_id)
        for column in hashed:
            paths = _split(row[column])
            hashes = _split(row[f"{column}{HASH_SUFFIX}"])
            if len(paths) != len(hashes):
                report.problems.append(
                    f"{sample_id}: {column} names {len(paths)} file(s) but {column}{HASH_SUFFIX} has "
                    f"{len(hashes)} hash(es)"
                )
                continue
            for relative, expected in zip(paths, hashes, strict=True):
                report.files += 1
                try:
                    path = manifest.resolve(relative)
                except SampleError as exc:
                    report.problems.append(f"{sample_id}: {column}: {exc}")
                    continue
                key = str(path)
                if key not in checked:
                    checked[key] = sha256_file(path) if path.is_file() else None
                actual = checked[key]
                if actual is None:
                    report.problems.append(f"{sample_id}: {column}: missing file {relative}")
                elif actual != expected.lower():
                    report.problems.append(
                        f"{sample_id}: {column}: altered file {relative} (sha256 {actual[:12]}..., "
                        f"the manifest expects {expected[:12]}...)"
                    )
    return report


def run(args: argparse.Namespace) -> int:
    try:
        report = verify(args.manifest, args.root)
    except ManifestError as exc:
        print(f"semantix-prep verify: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem, file=sys.stderr)
    for column in report.unhashed_columns:
        print(f"warning: {args.manifest} has no {column}{HASH_SUFFIX} column; {column} files were not checked",
              file=sys.stderr)
    status = "OK" if report.ok else f"FAILED, {len(report.problems)} problem(s)"
    print(f"{args.manifest}: {report.files} file reference(s) checked: {status}")
    return 0 if report.ok else 1


def _split(cell: str | None) -> list[str]:
    return [] if cell is None else [part.strip() for part in cell.split(REFERENCE_SEPARATOR)]

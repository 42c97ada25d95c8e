"""`semantix-prep coco_wikiart`: COCO 2017 val x WikiArt pairs, and the StyleID 20 x 40 protocol.

Writes into `--out` (default `data/coco_wikiart`):

- `contents/<id>.png`, `styles/<id>.png`: each image once, at `--resolution`;
- `manifest.csv`: `--pairs` pairs (default 1000);
- `manifest_styleid.csv`: the StyleID protocol, `--styleid-contents` x `--styleid-styles` (20 x 40
  = 800) pairs, every content with every style, content-major;
- `source.json` (sources, revisions, seed, counts, licence notes, skipped items) and the journal.

Sampling: contents and styles are each shuffled with the seed; the pairs take the first usable
images of each order and pair the i-th content with the i-th style, so no image is used twice
unless a source has fewer usable images than pairs (then `diagonal_pairs` spreads the reuse
evenly). The StyleID set takes the first contents and styles of the same orders: the same files.

Manifest columns: the standard ones (`prompt` is the content's caption when the source has one, or
from `--captions`), then each source's scalar columns prefixed `content_` / `reference_`: with
`huggan/wikiart` that is `reference_artist`, `reference_genre`, `reference_style` (names, not class
numbers); with a WikiArt folder laid out `<style>/<image>`, `reference_style` from the folder name.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from data_prep.common import (
    LOCAL_SOURCE_NOTE,
    Prepared,
    Preparer,
    PrepError,
    add_common_arguments,
    diagonal_pairs,
    finish,
    permutation,
    positive_int,
)
from data_prep.sources import (
    COCO_LICENCE,
    DEFAULT_CONTENTS,
    DEFAULT_STYLES,
    WIKIART_LICENCE,
    add_source_arguments,
    image_candidate,
    load_image_source,
    streamed_rows,
)
from semantix.data import sha256_file

MANIFEST = "manifest.csv"
STYLEID_MANIFEST = "manifest_styleid.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "contents", DEFAULT_CONTENTS, "COCO 2017 val images")
    parser.add_argument(
        "--captions", type=Path, default=None,
        help="COCO captions JSON (captions_val2017.json): the first caption of each image becomes its prompt",
    )
    add_source_arguments(parser, "styles", DEFAULT_STYLES, "WikiArt paintings")
    parser.add_argument("--pairs", type=positive_int, default=1000, help="pairs in manifest.csv (default 1000)")
    parser.add_argument("--styleid-contents", type=positive_int, default=20, help="StyleID contents (default 20)")
    parser.add_argument("--styleid-styles", type=positive_int, default=40, help="StyleID styles (default 40)")
    add_common_arguments(parser, "data/coco_wikiart")


def run(args: argparse.Namespace) -> None:
    limit = args.limit
    main_rows = min(args.pairs, limit) if limit else args.pairs
    # With --limit, StyleID rows are the first `limit` of the content-major grid.
    styleid_contents = min(args.styleid_contents, math.ceil(limit / args.styleid_styles)) if limit else args.styleid_contents
    styleid_styles = min(args.styleid_styles, limit) if limit else args.styleid_styles
    contents = load_image_source(
        args.contents, split=args.contents_split, revision=args.contents_revision, cache_dir=args.cache_dir,
        max_rows=streamed_rows(limit, max(main_rows, styleid_contents)),
    )
    styles = load_image_source(
        args.styles, split=args.styles_split, revision=args.styles_revision, cache_dir=args.cache_dir,
        label_name="style", max_rows=streamed_rows(limit, max(main_rows, styleid_styles)),
    )
    captions = _load_captions(args.captions) if args.captions else {}

    preparer = Preparer(args.out)
    content_order = permutation(args.seed, "coco_wikiart/contents", len(contents))
    style_order = permutation(args.seed, "coco_wikiart/styles", len(styles))
    prepared_contents = preparer.take(
        "contents",
        (image_candidate(contents, i, "contents", args.resolution, "content") for i in content_order),
        max(main_rows, styleid_contents),
    )
    prepared_styles = preparer.take(
        "styles",
        (image_candidate(styles, i, "styles", args.resolution, "style") for i in style_order),
        max(main_rows, styleid_styles),
    )

    n_contents, n_styles = min(len(prepared_contents), main_rows), min(len(prepared_styles), main_rows)
    main = [
        _row(prepared_contents[c], prepared_styles[s], captions)
        for c, s in diagonal_pairs(n_contents, n_styles, main_rows)
    ]
    styleid = [
        _row(content, style, captions)
        for content in prepared_contents[: args.styleid_contents]
        for style in prepared_styles[: args.styleid_styles]
    ][: limit or None]

    source: dict[str, Any] = {
        "settings": {
            "seed": args.seed,
            "limit": limit,
            "resolution": args.resolution,
            "pairs": args.pairs,
            "styleid_contents": args.styleid_contents,
            "styleid_styles": args.styleid_styles,
            "captions": (
                {"path": str(args.captions.resolve()), "sha256": sha256_file(args.captions)} if args.captions else None
            ),
        },
        "sources": {"contents": contents.description, "styles": styles.description},
        "licence_notes": {"contents": COCO_LICENCE, "styles": WIKIART_LICENCE, "local_sources": LOCAL_SOURCE_NOTE},
        "counts": {
            "contents": len(prepared_contents),
            "styles": len(prepared_styles),
            "contents_in_source": len(contents),
            "styles_in_source": len(styles),
        },
    }
    finish(args.out, "coco_wikiart", {MANIFEST: main, STYLEID_MANIFEST: styleid}, source, preparer)


def _row(content: Prepared, style: Prepared, captions: dict[int, str]) -> dict[str, Any]:
    """One manifest row; source columns go after the standard ones, prefixed by role."""
    content_file, style_file = content.files["image"], style.files["image"]
    prompt = captions.get(int(content.id)) if content.id.isdigit() else None
    row: dict[str, Any] = {
        "sample_id": f"{content.id}__{style.id}",
        "content": content_file.path,
        "reference": style_file.path,
        "prompt": prompt or content.meta.get("prompt"),
        "split": "test",
        "content_sha256": content_file.sha256,
        "reference_sha256": style_file.sha256,
    }
    for prefix, meta in (("content_", content.meta), ("reference_", style.meta)):
        for name, value in meta.items():
            column = f"{prefix}{name}"
            if not (prefix == "content_" and name == "prompt") and column not in row:
                row[column] = value
    return row


def _load_captions(path: Path) -> dict[int, str]:
    """COCO captions: image id -> its first caption (lowest annotation id), stripped."""
    try:
        annotations = json.loads(path.read_text())["annotations"]
        captions: dict[int, str] = {}
        for annotation in sorted(annotations, key=lambda a: a["id"]):
            captions.setdefault(int(annotation["image_id"]), str(annotation["caption"]).strip())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrepError(f"cannot read COCO captions from {path} ({type(exc).__name__}: {exc})") from exc
    return captions

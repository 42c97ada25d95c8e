"""`semantix-prep appearance`: same-domain structure/appearance pairs (Cross-Image Attention domains).

Cross-Image Attention never released its evaluation pairs, so this builds them, from one of:

- `--folder DIR` laid out `<domain>/structure/...` and `<domain>/appearance/...` (any domain
  names; images at any depth below those folders). Structure and appearance images are paired
  within each domain. No masks.
- `--coco-annotations instances_val2017.json` with `--images` (COCO 2017 val: hub id, folder, the
  official zip or a saved dataset; default the hub copy). An image belongs to a domain when its
  largest non-crowd instance is of one of the domain's categories (`--domain NAME=cat,cat`,
  default `DOMAINS`), covers at least `--min-area` of the image, and every other instance in the
  image is less than half its area (one dominant instance). Each domain's images are shuffled
  with the seed and dealt alternately to structure and appearance, so no image is both. The
  dominant instance's mask is drawn from its annotation (polygons or uncompressed RLE) at the
  image's size and stored with the image's geometry (`masks/<id>.png`, 0 or 255).

Per domain (in name order), `--pairs-per-domain` pairs (default 20) of the first usable images,
paired as `diagonal_pairs` does. Output in `--out` (default `data/appearance`): `images/`,
`masks/`, `manifest.csv`, `source.json`, the journal. Manifest columns beyond the standard ones
(`content` is the structure image, `reference` the appearance image, `domain` the domain):
`content_mask`, `reference_mask` (mask paths) with `content_mask_sha256`,
`reference_mask_sha256`, and in COCO mode `content_category`, `reference_category`,
`content_coco_image_id`, `reference_coco_image_id`, `content_area_fraction`,
`reference_area_fraction`; `prompt` is "a photo of a <structure category>".
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from data_prep.common import (
    LOCAL_SOURCE_NOTE,
    Built,
    Candidate,
    Prepared,
    Preparer,
    PrepError,
    Skip,
    add_common_arguments,
    diagonal_pairs,
    finish,
    item_key,
    permutation,
    positive_int,
    safe_id,
)
from data_prep.decode import BadItem, decode_image, orient
from data_prep.sources import (
    COCO_LICENCE,
    DEFAULT_CONTENTS,
    ImageSource,
    add_source_arguments,
    image_candidate,
    load_image_source,
)
from semantix.data import resize_center_crop, sha256_file

ROLES = ("structure", "appearance")
# Cross-Image Attention's domains that COCO's thing categories cover (buildings and landscapes
# are not COCO instance categories: build those from a --folder).
DOMAINS = {
    "animals": ("cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"),
    "birds": ("bird",),
    "cars": ("car",),
    "food": ("sandwich", "hot dog", "pizza", "donut", "cake", "broccoli", "carrot"),
    "fruit": ("banana", "apple", "orange"),
}
# Every other instance must be smaller than this fraction of the dominant one.
DOMINANCE = 0.5
USER_FOLDER_NOTE = "Images from the user's folder: their licence is whatever their owners granted; record it here."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--folder", type=Path, help="folder laid out <domain>/{structure,appearance}/...")
    group.add_argument("--coco-annotations", type=Path, help="COCO instances JSON (instances_val2017.json)")
    add_source_arguments(parser, "images", DEFAULT_CONTENTS, "COCO images for --coco-annotations")
    parser.add_argument(
        "--domain", action="append", default=None, metavar="NAME=CAT,CAT",
        help="a domain and its COCO categories (repeat; replaces the default domains)",
    )
    parser.add_argument(
        "--min-area", type=float, default=0.1,
        help="smallest fraction of the image the dominant instance may cover (default 0.1)",
    )
    parser.add_argument("--pairs-per-domain", type=positive_int, default=20, help="pairs per domain (default 20)")
    add_common_arguments(parser, "data/appearance")


def run(args: argparse.Namespace) -> None:
    preparer = Preparer(args.out)
    if args.folder is not None:
        source = load_image_source(str(args.folder), cache_dir=args.cache_dir)
        pools = _folder_pools(source, preparer, args.seed, args.resolution)
        sources: dict[str, Any] = {"folder": source.description}
        notes = {"folder": USER_FOLDER_NOTE, "local_sources": LOCAL_SOURCE_NOTE}
        settings: dict[str, Any] = {}
    else:
        source = load_image_source(
            args.images, split=args.images_split, revision=args.images_revision, cache_dir=args.cache_dir
        )
        domains = _parse_domains(args.domain) if args.domain else DOMAINS
        coco = _Coco.load(args.coco_annotations)
        pools = _coco_pools(coco, domains, args.min_area, source, preparer, args.seed, args.resolution)
        sources = {
            "images": source.description,
            "annotations": {"path": str(args.coco_annotations.resolve()), "sha256": sha256_file(args.coco_annotations)},
        }
        notes = {"images": COCO_LICENCE, "annotations": COCO_LICENCE, "local_sources": LOCAL_SOURCE_NOTE}
        settings = {
            "domains": {name: list(categories) for name, categories in domains.items()},
            "min_area": args.min_area,
            "dominance": DOMINANCE,
        }

    rows: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for domain in sorted({domain for domain, _ in pools}):
        needed = min(args.pairs_per_domain, args.limit - len(rows)) if args.limit else args.pairs_per_domain
        if needed <= 0:
            break
        taken = {role: preparer.take(f"{domain}/{role}", pools.get((domain, role), []), needed) for role in ROLES}
        counts[domain] = {role: len(taken[role]) for role in ROLES}
        pairs = diagonal_pairs(len(taken["structure"]), len(taken["appearance"]), needed)
        rows.extend(_row(domain, taken["structure"][s], taken["appearance"][a]) for s, a in pairs)

    document = {
        "settings": {
            "seed": args.seed,
            "limit": args.limit,
            "resolution": args.resolution,
            "pairs_per_domain": args.pairs_per_domain,
            **settings,
        },
        "sources": sources,
        "licence_notes": notes,
        "counts": counts,
    }
    finish(args.out, "appearance", {"manifest.csv": rows}, document, preparer)


def _row(domain: str, structure: Prepared, appearance: Prepared) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sample_id": f"{structure.id}__{appearance.id}",
        "content": structure.files["image"].path,
        "reference": appearance.files["image"].path,
        "prompt": f"a photo of a {structure.meta['category']}" if "category" in structure.meta else None,
        "domain": domain,
        "split": "test",
        "content_sha256": structure.files["image"].sha256,
        "reference_sha256": appearance.files["image"].sha256,
    }
    for prefix, item in (("content", structure), ("reference", appearance)):
        if "mask" in item.files:
            row[f"{prefix}_mask"] = item.files["mask"].path
            row[f"{prefix}_mask_sha256"] = item.files["mask"].sha256
    for prefix, item in (("content", structure), ("reference", appearance)):
        for name in ("category", "coco_image_id", "area_fraction"):
            if name in item.meta:
                row[f"{prefix}_{name}"] = item.meta[name]
    return row


def _folder_pools(
    source: ImageSource, preparer: Preparer, seed: int, resolution: int
) -> dict[tuple[str, str], list[Candidate]]:
    """Candidates of a `<domain>/{structure,appearance}/` folder by (domain, role), each pool shuffled.

    Files elsewhere in the folder are reported as skipped.
    """
    pools: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, path in enumerate(source.paths):
        parts = (path or "").split("/")
        if len(parts) >= 3 and parts[1] in ROLES:
            pools[(parts[0], parts[1])].append(index)
        else:
            preparer.skipped.append(
                Skip("folder", source.ids[index], source.origin(index),
                     "not under <domain>/structure/ or <domain>/appearance/")
            )
    if not pools:
        raise PrepError(f"{source.spec} has no images under <domain>/structure/ or <domain>/appearance/")
    shuffled = {}
    for (domain, role), indices in pools.items():
        indices.sort(key=lambda i: source.ids[i])
        order = permutation(seed, f"appearance/{domain}/{role}", len(indices))
        shuffled[(domain, role)] = [
            image_candidate(source, indices[i], "images", resolution, "appearance") for i in order
        ]
    return shuffled


@dataclass(frozen=True)
class _CocoItem:
    """A COCO image chosen for a domain: its source row, annotation entry and dominant instance."""

    row: int
    image: dict[str, Any]
    annotation: dict[str, Any]
    category: str
    area_fraction: float


@dataclass(frozen=True)
class _Coco:
    images: dict[int, dict[str, Any]]
    categories: dict[int, str]
    annotations: dict[int, list[dict[str, Any]]]

    @classmethod
    def load(cls, path: Path) -> _Coco:
        try:
            document = json.loads(path.read_text())
            images = {int(image["id"]): image for image in document["images"]}
            categories = {int(category["id"]): str(category["name"]) for category in document["categories"]}
            annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for annotation in document["annotations"]:
                annotations[int(annotation["image_id"])].append(annotation)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrepError(f"cannot read COCO annotations from {path} ({type(exc).__name__}: {exc})") from exc
        return cls(images, categories, dict(annotations))


def _parse_domains(specs: list[str]) -> dict[str, tuple[str, ...]]:
    domains = {}
    for spec in specs:
        name, _, categories = spec.partition("=")
        names = tuple(category.strip() for category in categories.split(",") if category.strip())
        if not name.strip() or not names:
            raise PrepError(f"--domain {spec!r}: expected NAME=category,category (COCO category names)")
        domains[name.strip()] = names
    return domains


def _coco_pools(
    coco: _Coco, domains: dict[str, tuple[str, ...]], min_area: float, source: ImageSource,
    preparer: Preparer, seed: int, resolution: int,
) -> dict[tuple[str, str], list[Candidate]]:
    """Candidates by (domain, role): each domain's eligible images shuffled, dealt alternately."""
    known = set(coco.categories.values())
    for name, categories in domains.items():
        unknown = [category for category in categories if category not in known]
        if unknown:
            raise PrepError(f"domain {name}: {', '.join(unknown)} are not categories of the COCO annotations")
    domain_of = {category: name for name, categories in domains.items() for category in categories}
    rows_by_id = {item_id: index for index, item_id in enumerate(source.ids)}
    eligible: dict[str, list[_CocoItem]] = defaultdict(list)
    for image_id in sorted(coco.images):
        image = coco.images[image_id]
        instances = [a for a in coco.annotations.get(image_id, []) if not a.get("iscrowd")]
        if not instances:
            continue
        dominant = max(instances, key=lambda a: (float(a["area"]), -int(a["id"])))
        category = coco.categories.get(int(dominant["category_id"]))
        fraction = float(dominant["area"]) / (float(image["width"]) * float(image["height"]))
        others_small = all(
            float(a["area"]) < DOMINANCE * float(dominant["area"]) for a in instances if a is not dominant
        )
        if category not in domain_of or fraction < min_area or not others_small:
            continue
        stem = safe_id(Path(str(image.get("file_name", ""))).stem)
        row = rows_by_id.get(str(image_id), rows_by_id.get(stem))
        if row is None:
            preparer.skipped.append(
                Skip("images", stem or str(image_id), str(image.get("file_name")),
                     f"COCO image {image_id} is not in the image source {source.spec}")
            )
            continue
        eligible[domain_of[category]].append(_CocoItem(row, image, dominant, category, fraction))
    pools: dict[tuple[str, str], list[Candidate]] = {}
    for domain, domain_items in eligible.items():
        order = permutation(seed, f"appearance/{domain}", len(domain_items))
        for offset, role in enumerate(ROLES):
            pools[(domain, role)] = [_coco_candidate(source, domain_items[i], resolution) for i in order[offset::2]]
    if not pools:
        raise PrepError(
            "no COCO image has one dominant instance of a domain's categories covering at least "
            f"{min_area:.0%} of it; lower --min-area or change --domain"
        )
    return pools


def _coco_candidate(source: ImageSource, item: _CocoItem, resolution: int) -> Candidate:
    item_id = source.ids[item.row]

    def build() -> Built:
        data, _ = source.read(item.row)
        image, orientation = decode_image(data)
        mask = orient(_draw_mask(item.annotation, int(item.image["width"]), int(item.image["height"])), orientation)
        if mask.size != image.size:
            raise BadItem(
                f"image is {image.size[0]}x{image.size[1]} px but its COCO annotation describes "
                f"{mask.size[0]}x{mask.size[1]} px"
            )
        square = resize_center_crop(mask, resolution).point(lambda value: 255 if value >= 128 else 0)
        meta = {
            "category": item.category,
            "coco_image_id": str(item.image["id"]),
            "area_fraction": f"{item.area_fraction:.4f}",
        }
        return {
            "image": (f"images/{item_id}.png", resize_center_crop(image, resolution)),
            "mask": (f"masks/{item_id}.png", square),
        }, meta

    key = item_key("appearance/coco", source.fingerprint, item_id, resolution, item.annotation)
    return Candidate(item_id, key, source.origin(item.row), build)


def _draw_mask(annotation: dict[str, Any], width: int, height: int) -> Image.Image:
    """The instance's mask at the image's stored size: polygons, or an uncompressed RLE."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        for polygon in segmentation:
            if len(polygon) >= 6:
                draw.polygon([float(value) for value in polygon], fill=255)
        return mask
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle_height, rle_width = (int(value) for value in segmentation["size"])
        flat = np.zeros(rle_height * rle_width, dtype=np.uint8)
        position, value = 0, 0
        for run in segmentation["counts"]:
            flat[position : position + int(run)] = value
            position += int(run)
            value = 255 - value
        # COCO's RLE runs down the columns (Fortran order).
        return Image.fromarray(flat.reshape((rle_width, rle_height)).T.copy())
    raise BadItem(
        f"annotation {annotation.get('id')} has a segmentation this script cannot draw (compressed "
        "RLE or none); only polygons and uncompressed RLE are supported"
    )

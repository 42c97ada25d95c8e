"""Tests of data_prep (`semantix-prep`) and the prepared-set dataset configs, on fixture data made here.

Fixtures stand in for the real sources without a network: COCO val as an imagefolder with a
metadata.jsonl of captions (and the same folder zipped, like the official val2017.zip), WikiArt as
a dataset saved with `datasets` (class-label columns, like huggan/wikiart) and as a
`<style>/<image>` folder, DAVIS as `JPEGImages/480p/<clip>/` frame folders, a folder with an mp4
written by PyAV, and a COCO instances file with polygon and RLE masks. Every bad-data class of the
spec sits among them and must be skipped with its reason.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose, run_cli
from hydra.utils import instantiate
from PIL import Image

from data_prep import common
from data_prep.cli import main
from data_prep.common import JOURNAL_NAME, diagonal_pairs
from semantix.cli import root_cause
from semantix.data import Manifest, sha256_file
from semantix.types import ManifestError

RES = "64"  # stored resolution in these tests: small and fast

# Content files that must be skipped, with a word their reason must contain.
BAD_CONTENTS = {
    "000000000090": "truncated",
    "000000000091": "not an image",
    "000000000092": "smaller than 64",
    "000000000093": "larger than 8192",
    "000000000094": "floating-point",
}
# Content files in formats the prep converts to 8-bit RGB, and the RGB value each must become.
CONVERTED = {
    "000000000081": (77, 77, 77),  # greyscale
    "000000000083": (128, 128, 128),  # 16-bit greyscale 32896 = 128 * 257, scaled, not clipped
    "000000000084": (255, 255, 255),  # fully transparent RGBA, flattened onto white
}
N_GOOD_CONTENTS = 10 + 5  # 10 RGB + CMYK, grey, palette, 16-bit, RGBA
N_GOOD_STYLES = 12


# ---------------------------------------------------------------------------------------------
# fixture data


def _noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _make_contents(folder: Path) -> None:
    """A local COCO val stand-in: imagefolder with captions, the bad-data classes and conversions."""
    folder.mkdir(parents=True)
    files = {}
    for index in range(1, 11):
        size = (96, 80) if index % 2 else (80, 112)
        files[f"{index:012d}.jpg"] = _encoded(Image.fromarray(_noise(*size, seed=index)), "JPEG")
    files["000000000080.jpg"] = _encoded(Image.new("CMYK", (72, 72), (0, 200, 200, 0)), "JPEG")
    files["000000000081.png"] = _encoded(Image.new("L", (72, 72), 77), "PNG")
    files["000000000082.png"] = _encoded(Image.fromarray(_noise(72, 72, 82)).convert("P"), "PNG")
    files["000000000083.png"] = _encoded(Image.fromarray(np.full((72, 72), 32896, dtype=np.uint16)), "PNG")
    files["000000000084.png"] = _encoded(Image.new("RGBA", (72, 72), (255, 0, 0, 0)), "PNG")
    good_jpeg = _encoded(Image.fromarray(_noise(96, 96, 90)), "JPEG")
    files["000000000090.jpg"] = good_jpeg[: len(good_jpeg) // 2]
    files["000000000091.png"] = b"this is not an image"
    files["000000000092.png"] = _encoded(Image.fromarray(_noise(40, 40, 92)), "PNG")
    files["000000000093.png"] = _encoded(Image.new("RGB", (8200, 64)), "PNG")
    files["000000000094.tif"] = _encoded(Image.fromarray(np.ones((72, 72), dtype=np.float32)), "TIFF")
    with open(folder / "metadata.jsonl", "w") as handle:
        for name, data in sorted(files.items()):
            (folder / name).write_bytes(data)
            handle.write(json.dumps({"file_name": name, "captions": [f"caption of {name}", "another"]}) + "\n")


def _make_styles(path: Path) -> None:
    """A WikiArt stand-in saved with `datasets`: class-label style/genre/artist columns, 2 bad rows."""
    import datasets

    images = [{"bytes": _encoded(Image.fromarray(_noise(90, 70, 100 + i)), "PNG"), "path": None}
              for i in range(N_GOOD_STYLES)]
    truncated = _encoded(Image.fromarray(_noise(90, 90, 200)), "PNG")
    images += [{"bytes": b"\x89PNG garbage", "path": None}, {"bytes": truncated[:-200], "path": None}]
    count = len(images)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "artist": datasets.ClassLabel(names=["monet", "picasso", "hokusai"]),
            "genre": datasets.ClassLabel(names=["landscape", "portrait"]),
            "style": datasets.ClassLabel(names=["Impressionism", "Cubism", "Ukiyo_e"]),
        }
    )
    table = {"image": images, "artist": [i % 3 for i in range(count)], "genre": [i % 2 for i in range(count)],
             "style": [i % 3 for i in range(count)]}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(path))


def _make_style_folder(folder: Path) -> None:
    """A WikiArt folder laid out `<style>/<image>`."""
    for index in range(6):
        style = ("Baroque", "Cubism")[index % 2]
        (folder / style).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_noise(80, 90, 300 + index)).save(folder / style / f"painting_{index}.png")


def _frames_folder(folder: Path, count: int, size=(96, 80), seed=0) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(_noise(*size, seed=seed * 1000 + index)).save(folder / f"{index:05d}.jpg")


def _make_davis(root: Path) -> Path:
    clips = root / "JPEGImages" / "480p"
    for index in range(4):
        _frames_folder(clips / f"clip{index}", 20, seed=index)
    _frames_folder(clips / "short", 10, seed=10)
    _frames_folder(clips / "mixed", 20, seed=11)
    Image.fromarray(_noise(112, 80, 1)).save(clips / "mixed" / "00007.jpg")
    _frames_folder(clips / "broken", 20, seed=12)
    (clips / "broken" / "00019.jpg").write_bytes(b"not a jpeg")
    return root


def _write_mp4(path: Path, frames: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 80, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(_noise(96, 80, 500 + index), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _rle(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a boolean mask: column-major run lengths, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel != value:
            counts.append(run)
            value, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


def _make_coco(root: Path) -> tuple[Path, Path]:
    """COCO images (a folder) and an instances file: which images qualify is spelled out below."""
    images_dir = root / "val2017"
    images_dir.mkdir(parents=True)
    square = [32, 32, 96, 32, 96, 96, 32, 96]  # a 64 x 64 square in a 128 x 128 image: 25%
    rect = np.zeros((128, 128), dtype=bool)
    rect[32:96, 32:96] = True
    plan = {  # image id: (annotations as (category, area, segmentation, iscrowd), annotated width)
        1: ([("cat", 4096, [square], 0)], 128),
        2: ([("dog", 4096, [square], 0)], 128),
        3: ([("cat", 4096, {"counts": _rle(rect), "size": [128, 128]}, 0)], 128),
        4: ([("dog", 4096, [square], 0), ("person", 500, [[0, 0, 20, 0, 20, 20]], 0)], 128),
        5: ([("bird", 4096, [square], 0)], 128),
        6: ([("bird", 4096, [square], 0)], 128),
        7: ([("cat", 300, [[0, 0, 20, 0, 20, 20]], 0)], 128),  # too small
        8: ([("cat", 4096, [square], 0), ("dog", 3000, [square], 0)], 128),  # no single dominant one
        9: ([("cat", 4096, [square], 0)], 200),  # the annotation's size disagrees with the file
        10: ([("bird", 4096, [square], 0)], 128),  # no such file among the images
        11: ([("cat", 9000, {"counts": [0, 100], "size": [10, 10]}, 1)], 128),  # crowd only
        12: ([("cat", 4096, [square], 0)], 128),
    }
    categories = {"person": 1, "bird": 16, "cat": 17, "dog": 18}
    document = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    for image_id, (instances, width) in plan.items():
        name = f"{image_id:012d}.png"
        document["images"].append({"id": image_id, "file_name": name, "width": width, "height": 128})
        if image_id != 10:
            Image.fromarray(_noise(128, 128, 700 + image_id)).save(images_dir / name)
        for category, area, segmentation, crowd in instances:
            document["annotations"].append(
                {"id": len(document["annotations"]) + 1, "image_id": image_id, "category_id": categories[category],
                 "area": area, "segmentation": segmentation, "iscrowd": crowd, "bbox": [32, 32, 64, 64]}
            )
    annotations_path = root / "instances_val2017.json"
    annotations_path.write_text(json.dumps(document))
    return images_dir, annotations_path


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    _make_contents(root / "val2017")
    with zipfile.ZipFile(root / "val2017.zip", "w") as archive:
        for file in sorted((root / "val2017").iterdir()):
            archive.write(file, f"val2017/{file.name}")
    _make_styles(root / "wikiart")
    _make_style_folder(root / "wikiart_folder")
    coco_images, coco_annotations = _make_coco(root / "coco")
    return {
        "contents": root / "val2017",
        "contents_zip": root / "val2017.zip",
        "styles": root / "wikiart",
        "style_folder": root / "wikiart_folder",
        "davis": _make_davis(root / "davis"),
        "coco_images": coco_images,
        "coco_annotations": coco_annotations,
        "cache": root / "hf-cache",
    }


def prep(*args: object) -> int:
    """Run `semantix-prep` in-process; returns its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    return exit_info.value.code


def coco_wikiart(sources: dict[str, Path], out: Path, *extra: object, contents: Path | None = None) -> int:
    return prep(
        "coco_wikiart", "--contents", contents or sources["contents"], "--styles", sources["styles"],
        "--pairs", 16, "--styleid-contents", 3, "--styleid-styles", 4, "--resolution", RES,
        "--cache-dir", sources["cache"], "--out", out, *extra,
    )


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under a folder (the journal aside) by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != JOURNAL_NAME
    }


# ---------------------------------------------------------------------------------------------
# coco_wikiart


def test_coco_wikiart_builds_both_manifests_and_skips_bad_data(sources, tmp_path):
    out = tmp_path / "cw"
    assert coco_wikiart(sources, out) == 0

    main_manifest = Manifest.load(out / "manifest.csv")
    assert len(main_manifest) == 16
    frame = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    for column in ("prompt", "content_sha256", "reference_sha256", "reference_style", "reference_genre",
                   "reference_artist"):
        assert column in frame.columns, column
    assert set(frame["reference_style"]) <= {"Impressionism", "Cubism", "Ukiyo_e"}
    assert frame["prompt"].str.startswith("caption of ").all()
    # 16 pairs (more than the usable images, so every candidate was tried): 15 usable contents
    # and 12 usable styles are each used before any is used again, none more than twice.
    content_uses, style_uses = Counter(frame["content"]), Counter(frame["reference"])
    assert len(content_uses) == N_GOOD_CONTENTS and max(content_uses.values()) == 2
    assert len(style_uses) == N_GOOD_STYLES and max(style_uses.values()) == 2

    styleid = Manifest.load(out / "manifest_styleid.csv")
    assert len(styleid) == 3 * 4
    styleid_frame = pd.read_csv(out / "manifest_styleid.csv", dtype=str)
    assert set(styleid_frame["content"]) <= set(frame["content"])  # the same files, written once

    source = json.loads((out / "source.json").read_text())
    assert source["settings"]["seed"] == 0 and source["counts"]["contents"] == N_GOOD_CONTENTS
    assert source["sources"]["styles"]["kind"] == "saved_dataset"
    assert source["manifests"]["manifest.csv"]["sha256"] == sha256_file(out / "manifest.csv")
    assert "COCO" in source["licence_notes"]["contents"] and "resize_policy" in source
    reasons = {skip["id"]: skip["reason"] for skip in source["skipped"] if skip["role"] == "contents"}
    assert set(reasons) == set(BAD_CONTENTS)
    for item_id, word in BAD_CONTENTS.items():
        assert word in reasons[item_id], (item_id, reasons[item_id])
    style_skips = [skip["reason"] for skip in source["skipped"] if skip["role"] == "styles"]
    assert len(style_skips) == 2

    for item_id, colour in CONVERTED.items():
        with Image.open(out / "contents" / f"{item_id}.png") as image:
            assert image.mode == "RGB" and image.size == (64, 64)
            assert image.getpixel((10, 10)) == colour
    sample = main_manifest.load_sample(main_manifest.sample_ids[0], 32)
    assert sample.content.shape == (3, 32, 32) and sample.prompt.startswith("caption of ")
    assert sample.meta["reference_style"] in {"Impressionism", "Cubism", "Ukiyo_e"}


def test_same_seed_is_byte_identical_and_another_seed_samples_differently(sources, tmp_path):
    assert coco_wikiart(sources, tmp_path / "a", "--pairs", 5) == 0
    assert coco_wikiart(sources, tmp_path / "b", "--pairs", 5) == 0
    assert coco_wikiart(sources, tmp_path / "c", "--pairs", 5, "--seed", 1) == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")  # manifests, images and source.json
    first = pd.read_csv(tmp_path / "a" / "manifest.csv", dtype=str)
    other = pd.read_csv(tmp_path / "c" / "manifest.csv", dtype=str)
    assert set(first["content"]) != set(other["content"])
    assert set(first["reference"]) != set(other["reference"])


def test_limit_gives_the_first_rows_of_the_full_set(sources, tmp_path):
    assert coco_wikiart(sources, tmp_path / "full") == 0
    assert coco_wikiart(sources, tmp_path / "quick", "--limit", 4) == 0
    for name in ("manifest.csv", "manifest_styleid.csv"):
        full = pd.read_csv(tmp_path / "full" / name, dtype=str)
        quick = pd.read_csv(tmp_path / "quick" / name, dtype=str)
        assert len(quick) == 4
        pd.testing.assert_frame_equal(quick, full.head(4))


def test_an_interrupted_run_resumes_to_the_same_result(sources, tmp_path, monkeypatch, capsys):
    assert coco_wikiart(sources, tmp_path / "clean") == 0
    out = tmp_path / "resumed"
    real_write, calls = common.atomic_write_bytes, []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 8:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-way
        real_write(path, data)

    monkeypatch.setattr(common, "atomic_write_bytes", dying_write)
    assert coco_wikiart(sources, out) == 130
    assert not (out / "manifest.csv").exists()
    with open(out / JOURNAL_NAME, "a") as journal:
        journal.write('{"key": "torn by a kill -9')  # a journal line cut short
    monkeypatch.setattr(common, "atomic_write_bytes", real_write)
    capsys.readouterr()
    assert coco_wikiart(sources, out) == 0
    assert "7 reused" in capsys.readouterr().out
    assert tree(out) == tree(tmp_path / "clean")
    assert not list(out.rglob("*.tmp"))
    assert coco_wikiart(sources, out) == 0
    assert "0 item(s) written" in capsys.readouterr().out  # the journal survived the torn line

    # Damage the output: a deleted image and an altered one are rebuilt, the rest reused.
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    (out / frame["content"][0]).unlink()
    (out / frame["reference"][1]).write_bytes(b"altered")
    assert coco_wikiart(sources, out) == 0
    assert "2 item(s) written" in capsys.readouterr().out
    assert tree(out) == tree(tmp_path / "clean")
    assert frame["sample_id"].is_unique


def test_hub_and_local_sources_share_one_code_path(sources, tmp_path, monkeypatch):
    """The official zip and the folder give the same manifest; so does a 'hub' dataset (faked)."""
    import datasets

    from data_prep import sources as sources_module

    assert coco_wikiart(sources, tmp_path / "folder") == 0
    assert coco_wikiart(sources, tmp_path / "zip", contents=sources["contents_zip"]) == 0
    saved = datasets.load_from_disk(str(sources["styles"]))
    requested = []

    real_load_dataset = datasets.load_dataset

    def fake_hub(repo_id, **kwargs):
        if repo_id == "imagefolder":  # the local contents folder
            return real_load_dataset(repo_id, **kwargs)
        requested.append((repo_id, kwargs["split"], kwargs["revision"]))
        return saved

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_hub)
    monkeypatch.setattr(sources_module, "_hub_commit", lambda repo_id, revision: "0123abc")
    assert prep(
        "coco_wikiart", "--contents", sources["contents"], "--styles", "huggan/wikiart", "--styles-revision", "v1",
        "--pairs", 16, "--styleid-contents", 3, "--styleid-styles", 4, "--resolution", RES,
        "--cache-dir", sources["cache"], "--out", tmp_path / "hub",
    ) == 0
    assert requested == [("huggan/wikiart", "train", "v1")]
    folder_manifest = (tmp_path / "folder" / "manifest.csv").read_bytes()
    assert (tmp_path / "zip" / "manifest.csv").read_bytes() == folder_manifest
    assert (tmp_path / "hub" / "manifest.csv").read_bytes() == folder_manifest
    hub_source = json.loads((tmp_path / "hub" / "source.json").read_text())["sources"]["styles"]
    assert hub_source["kind"] == "hub" and hub_source["revision"] == "v1"
    assert hub_source["resolved_revision"] == "0123abc"


def test_limit_streams_only_the_first_rows_of_a_hub_source(sources, tmp_path, monkeypatch, capsys):
    """`--limit` reads a hub dataset streamed, and only the rows it needs (the hub is faked: offline)."""
    import datasets

    from data_prep import sources as sources_module
    from data_prep.sources import streamed_rows

    stored = datasets.load_from_disk(str(sources["styles"])).cast_column("image", datasets.Image(decode=False))
    rows_read: list[int] = []

    def hub_rows():
        for index, row in enumerate(stored):
            rows_read.append(index)
            yield row

    real_load_dataset = datasets.load_dataset

    def fake_hub(repo_id, **kwargs):
        if repo_id == "imagefolder":  # the local contents folder
            return real_load_dataset(repo_id, **kwargs)
        assert kwargs.get("streaming") is True, "a --limit run must not download the whole hub dataset"
        return datasets.IterableDataset.from_generator(hub_rows, features=stored.features)

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_hub)
    monkeypatch.setattr(sources_module, "_hub_commit", lambda repo_id, revision: "0123abc")
    out = tmp_path / "hub"
    args = ("coco_wikiart", "--contents", sources["contents"], "--styles", "huggan/wikiart", "--limit", 2,
            "--pairs", 16, "--styleid-contents", 3, "--styleid-styles", 4, "--resolution", RES,
            "--cache-dir", sources["cache"], "--out", out)
    assert prep(*args) == 0
    wanted = streamed_rows(2, 2)
    # The first rows only (the stream may read one row ahead), not the whole source.
    assert wanted <= len(rows_read) <= wanted + 1 < len(stored)
    assert len(pd.read_csv(out / "manifest.csv")) == 2
    styles = json.loads((out / "source.json").read_text())["sources"]["styles"]
    assert styles["kind"] == "hub" and styles["streamed_first_rows"] == wanted and styles["rows"] == wanted
    capsys.readouterr()
    assert prep(*args) == 0  # a rerun streams the same rows and reuses every image it wrote
    assert "0 item(s) written" in capsys.readouterr().out


def test_verify_reports_altered_and_missing_files(sources, tmp_path, capsys):
    out = tmp_path / "cw"
    assert coco_wikiart(sources, out, "--pairs", 4) == 0
    assert prep("verify", out / "manifest.csv") == 0
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    altered, missing = out / frame["content"][0], out / frame["reference"][1]
    altered.write_bytes(altered.read_bytes()[:-1] + b"\x00")
    missing.unlink()
    capsys.readouterr()
    assert prep("verify", out / "manifest.csv") == 1
    report = capsys.readouterr().err
    assert f"altered file {frame['content'][0]}" in report
    assert f"missing file {frame['reference'][1]}" in report
    assert prep("verify", tmp_path / "absent.csv") == 2


# ---------------------------------------------------------------------------------------------
# appearance


def test_appearance_from_a_domain_folder(sources, tmp_path):
    folder = tmp_path / "domains"
    for domain, seed in (("animals", 0), ("food", 50)):
        for role_index, role in enumerate(("structure", "appearance")):
            for index in range(3):
                target = folder / domain / role / f"{role[0]}{index}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_noise(80, 80, seed + 10 * role_index + index)).save(target)
    (folder / "animals" / "appearance" / "broken.png").write_bytes(b"garbage")
    Image.fromarray(_noise(80, 80, 99)).save(folder / "stray.png")
    out = tmp_path / "appearance"
    assert prep("appearance", "--folder", folder, "--pairs-per-domain", 4, "--resolution", RES,
                "--cache-dir", sources["cache"], "--out", out) == 0
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    assert list(frame["domain"]) == ["animals"] * 4 + ["food"] * 4
    assert frame["content"].str.contains("structure").all() and frame["reference"].str.contains("appearance").all()
    for domain in ("animals", "food"):
        rows = frame[frame["domain"] == domain]
        assert rows["content"].str.contains(domain).all() and rows["reference"].str.contains(domain).all()
    skipped = {skip["id"]: skip["reason"] for skip in json.loads((out / "source.json").read_text())["skipped"]}
    assert "not under <domain>/structure/" in skipped["stray"]
    assert "not an image" in skipped["animals-appearance-broken"]
    manifest = Manifest.load(out / "manifest.csv")
    assert manifest.load_sample(manifest.sample_ids[0], 32).domain == "animals"


def test_appearance_from_coco_writes_masks(sources, tmp_path):
    out = tmp_path / "appearance"
    args = ["appearance", "--coco-annotations", sources["coco_annotations"], "--images", sources["coco_images"],
            "--domain", "animals=cat,dog", "--domain", "birds=bird", "--min-area", 0.1,
            "--pairs-per-domain", 4, "--resolution", RES, "--cache-dir", sources["cache"]]
    assert prep(*args, "--out", out) == 0
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    for column in ("content_mask", "reference_mask", "content_mask_sha256", "reference_mask_sha256",
                   "content_category", "reference_category", "domain", "prompt"):
        assert column in frame.columns, column
    used = set(frame["content_coco_image_id"]) | set(frame["reference_coco_image_id"])
    assert used <= {"1", "2", "3", "4", "5", "6", "12"}  # 7, 8, 11 do not qualify; 9, 10 are bad
    assert not set(frame["content"]) & set(frame["reference"])  # no image is both roles
    assert (frame[frame["domain"] == "birds"]["content_category"] == "bird").all()
    skipped = json.loads((out / "source.json").read_text())["skipped"]
    reasons = " | ".join(skip["reason"] for skip in skipped)
    assert "COCO image 10 is not in the image source" in reasons
    by_id = {skip["id"]: skip["reason"] for skip in skipped}
    assert "its COCO annotation describes 200x128 px" in by_id["000000000009"]  # every pool was used up
    for _, row in frame.iterrows():
        for role in ("content", "reference"):
            with Image.open(out / row[f"{role}_mask"]) as mask:
                pixels = np.asarray(mask)
            assert mask.mode == "L" and pixels.shape == (64, 64) and set(np.unique(pixels)) == {0, 255}
            assert pixels[32, 32] == 255 and pixels[2, 2] == 0  # the centre square, at 64 px
            assert abs((pixels == 255).mean() - 0.25) < 0.03
    assert prep("verify", out / "manifest.csv") == 0
    mask = out / frame["content_mask"][0]
    mask.write_bytes(b"altered")
    assert prep("verify", out / "manifest.csv") == 1


# ---------------------------------------------------------------------------------------------
# videos


def test_videos_from_davis_frame_folders(sources, tmp_path):
    out = tmp_path / "videos"
    args = ["videos", "--videos", sources["davis"], "--styles", sources["style_folder"], "--frames", 8,
            "--resolution", RES, "--cache-dir", sources["cache"]]
    assert prep(*args, "--out", out) == 0
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    assert sorted(frame["sample_id"].str.split("__").str[0]) == ["clip0", "clip1", "clip2", "clip3", "short"]
    for _, row in frame.iterrows():
        frames = row["frames"].split(";")
        assert len(frames) == 8 == int(row["n_frames"]) and frames[0] == row["content"]
        uniform = "0;1;2;3;5;6;7;9" if row["content"].startswith("clips/short/") else "0;2;5;8;10;13;16;19"
        assert row["content_source_frames"] == uniform  # spread over the clip's 10 or 20 frames
        hashes = row["frames_sha256"].split(";")
        assert [sha256_file(out / path) for path in frames] == hashes
        assert row["reference_style"] in {"Baroque", "Cubism"}
    reasons = {skip["id"]: skip["reason"] for skip in json.loads((out / "source.json").read_text())["skipped"]}
    assert set(reasons) == {"mixed", "broken"}  # 'short' has 10 frames: enough for 8
    assert "frame sizes differ" in reasons["mixed"]
    assert "frame 00019.jpg" in reasons["broken"]
    manifest = Manifest.load(out / "manifest.csv")
    assert manifest.load_sample(manifest.sample_ids[0], 32).meta["n_frames"] == "8"
    assert prep("verify", out / "manifest.csv") == 0

    strided = tmp_path / "strided"
    assert prep(*args, "--frames", 16, "--stride", 1, "--out", strided) == 0
    reasons = {skip["id"]: skip["reason"] for skip in json.loads((strided / "source.json").read_text())["skipped"]}
    assert "clip has 10 frames, fewer than the 16" in reasons["short"]
    assert pd.read_csv(strided / "manifest.csv", dtype=str)["content_source_frames"][0] == ";".join(map(str, range(16)))


def test_videos_limit_downloads_only_a_few_clips_of_a_hub_repository(sources, tmp_path, monkeypatch):
    """`--videos REPO --limit 1`: the repository's file list picks a few clips, and only their files are
    downloaded (the hub is faked from the DAVIS folder: offline)."""
    import fnmatch
    import shutil

    import huggingface_hub

    from data_prep.videos import hub_clips_to_fetch

    repo = Path(sources["davis"])
    files = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    requested = []

    class FakeApi:
        def list_repo_files(self, repo_id, repo_type, revision):
            return files

    def fake_snapshot(repo_id, repo_type, revision, allow_patterns):
        requested.append(allow_patterns)
        local = tmp_path / "snapshot" / "0123abc"
        for name in files:
            if allow_patterns is None or any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(repo / name, local / name)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = tmp_path / "videos"
    assert prep("videos", "--videos", "someone/davis", "--styles", sources["style_folder"], "--frames", 8,
                "--limit", 1, "--resolution", RES, "--cache-dir", sources["cache"], "--out", out) == 0
    [patterns] = requested
    downloaded = {path.parent.name for path in (tmp_path / "snapshot").rglob("*.jpg")}
    all_clips = {Path(name).parent.name for name in files if name.endswith(".jpg")}
    assert len(patterns) == len(downloaded) == hub_clips_to_fetch(1, 1) < len(all_clips)
    assert len(pd.read_csv(out / "manifest.csv")) == 1
    videos = json.loads((out / "source.json").read_text())["sources"]["videos"]
    assert videos["kind"] == "hub" and videos["downloaded_clips"] == patterns


def test_videos_from_a_folder_of_video_files(sources, tmp_path):
    pytest.importorskip("av")
    folder = tmp_path / "clips"
    folder.mkdir()
    _write_mp4(folder / "walk.mp4", 20)
    _write_mp4(folder / "blink.mp4", 5)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    _frames_folder(folder / "pan", 18, seed=3)
    out = tmp_path / "videos"
    assert prep("videos", "--videos", folder, "--styles", sources["styles"], "--frames", 16, "--resolution", RES,
                "--cache-dir", sources["cache"], "--out", out) == 0
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    clips = sorted(sample.split("__")[0] for sample in frame["sample_id"])
    assert clips == ["pan", "walk"]
    walk = frame[frame["sample_id"].str.startswith("walk__")].iloc[0]
    assert walk["content_source_fps"] == "12" and walk["content_source_frame_count"] == "20"
    assert len(set(walk["frames_sha256"].split(";"))) == 16  # 16 distinct frames
    reasons = {skip["id"]: skip["reason"] for skip in json.loads((out / "source.json").read_text())["skipped"]}
    assert "clip has 5 frames, fewer than the 16" in reasons["blink"]
    assert "video cannot be decoded" in reasons["corrupt"]


# ---------------------------------------------------------------------------------------------
# the harness side: dataset configs


@pytest.mark.parametrize(
    "config, command",
    [("coco_wikiart", "semantix-prep coco_wikiart"), ("coco_wikiart_styleid", "semantix-prep coco_wikiart"),
     ("appearance", "semantix-prep appearance"), ("videos", "semantix-prep videos")],
)
def test_a_dataset_config_without_its_manifest_names_the_command(config, command, tmp_path):
    absent = tmp_path / "nowhere" / "manifest.csv"
    with pytest.raises(Exception) as error:
        instantiate(compose([f"dataset={config}", f"dataset.manifest={absent}"]).dataset)
    cause = root_cause(error.value)
    assert isinstance(cause, ManifestError)
    assert f"{command}" in str(cause) and f"--out {absent.parent}" in str(cause)
    assert "dataset.manifest" in str(cause)


def test_an_unknown_prepared_set_lists_the_known_ones(tmp_path):
    from semantix.data.dataset import prepared_dataset

    with pytest.raises(ValueError, match="known: appearance, coco_wikiart, coco_wikiart_styleid, videos"):
        prepared_dataset("coco", tmp_path / "manifest.csv", 64)


def test_a_prepared_manifest_loads_through_its_config(sources, tmp_path):
    out = tmp_path / "cw"
    assert coco_wikiart(sources, out, "--pairs", 3) == 0
    for config, name, rows in (("coco_wikiart", "manifest.csv", 3), ("coco_wikiart_styleid", "manifest_styleid.csv", 12)):
        dataset = instantiate(compose([f"dataset={config}", f"dataset.manifest={out / name}"]).dataset)
        assert len(dataset) == rows
        sample = dataset.load_sample(dataset.sample_ids[0])
        assert sample.content.shape[-1] == dataset.resolution
        assert dataset.provenance()["manifest_sha256"] == sha256_file(out / name)


def test_semantix_prep_console_script(sources, tmp_path):
    out = tmp_path / "cw"
    assert coco_wikiart(sources, out, "--pairs", 2) == 0
    result = run_cli(["semantix-prep", "verify", str(out / "manifest.csv")], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_diagonal_pairs_reuse_nothing_more_than_necessary():
    for n_a, n_b, count in ((5, 5, 5), (6, 4, 10), (15, 12, 16), (3, 7, 7), (3, 7, 21), (4, 6, 24), (2, 2, 9)):
        pairs = diagonal_pairs(n_a, n_b, count)
        assert len(pairs) == len(set(pairs)) == min(count, n_a * n_b)
        for side, n in ((0, n_a), (1, n_b)):
            uses = Counter(pair[side] for pair in pairs)
            assert max(uses.values()) == -(-len(pairs) // n)  # ceil: every item used before any repeats
    assert diagonal_pairs(10, 10, 3) == [(0, 0), (1, 1), (2, 2)]

"""Tests of semantix.data: image validation, the resize policy, manifests, and the demo set."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import pytest
import skimage
import torch
from PIL import Image, ImageFile, features

from semantix.data import (
    DEMO_DIR,
    Manifest,
    demo_manifest_path,
    open_image,
    sha256_file,
    to_tensor,
    write_manifest,
)
from semantix.types import ManifestError, SampleError

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# helpers that make image files


def _rgb(width: int = 80, height: int = 72, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG file written by hand, for what Pillow will not write (16-bit RGB, lying headers, bad data).

    `idat` is the compressed pixel data, written as it is.
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _expect_sample_error(path: Path, *fragments: str, **kwargs) -> str:
    with pytest.raises(SampleError) as info:
        open_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------
# open_image: one specific error per bad-data class


def test_good_image_opens_as_8bit_rgb(tmp_path):
    path = _save(_rgb(), tmp_path / "good.png")
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (80, 72)
    assert np.array_equal(np.asarray(image), np.asarray(_rgb()))


def test_missing_file(tmp_path):
    _expect_sample_error(tmp_path / "nope.png", "does not exist")
    _expect_sample_error(tmp_path, "is a directory")


def test_not_an_image(tmp_path):
    path = tmp_path / "text.png"
    path.write_bytes(b"this is not an image, just text")
    _expect_sample_error(path, f"{path} is not an image")


def test_corrupt_image_data(tmp_path):
    # A valid PNG header, then pixel data that starts like a zlib stream but is not one.
    path = tmp_path / "corrupt.png"
    path.write_bytes(_png(80, 80, 8, 2, b"\x78\x9c" + bytes(range(256)) * 8))
    message = _expect_sample_error(path, f"{path} is corrupt")
    assert "truncated" not in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    full = tmp_path / f"full.{fmt.lower()}"
    _save(_rgb(160, 120), full, format=fmt)
    data = full.read_bytes()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    # The class, not just Pillow's wording: the message must say the file itself is truncated.
    _expect_sample_error(path, f"{path} is truncated")


def test_truncated_detection_refuses_load_truncated_images(tmp_path, monkeypatch):
    path = _save(_rgb(), tmp_path / "good.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        open_image(path)


def test_cmyk(tmp_path):
    path = _save(Image.new("CMYK", (80, 80), (10, 20, 30, 40)), tmp_path / "cmyk.jpg")
    _expect_sample_error(path, "CMYK", "8-bit RGB")


def test_16_bit_grey(tmp_path):
    path = _save(Image.new("I;16", (80, 80), 1000), tmp_path / "grey16.png")
    _expect_sample_error(path, "16-bit", "8-bit RGB")


def test_16_bit_rgb_png(tmp_path):
    # Pillow decodes a 48-bit PNG to mode "RGB"; the raw mode must still give it away.
    pixels = np.random.default_rng(0).integers(0, 65536, size=(70, 80, 3)).astype(">u2")
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(70))
    path = tmp_path / "rgb48.png"
    path.write_bytes(_png(80, 70, 16, 2, zlib.compress(raw)))
    assert Image.open(path).mode == "RGB"
    _expect_sample_error(path, "16-bit")


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale(tmp_path, mode):
    path = _save(Image.new(mode, (80, 80), 1), tmp_path / f"grey_{mode}.png")
    _expect_sample_error(path, "greyscale", "8-bit RGB")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_channel(tmp_path, mode):
    path = _save(Image.new(mode, (80, 80)), tmp_path / f"alpha_{mode}.png")
    _expect_sample_error(path, "alpha")


def test_palette_with_transparency_is_alpha(tmp_path):
    image = _rgb().convert("P")
    path = _save(image, tmp_path / "palette_t.png", transparency=0)
    _expect_sample_error(path, "alpha")


def test_palette_without_transparency_becomes_rgb(tmp_path):
    image = _rgb().convert("P")
    path = _save(image, tmp_path / "palette.png")
    opened = open_image(path)
    assert opened.mode == "RGB"
    assert np.array_equal(np.asarray(opened), np.asarray(image.convert("RGB")))


def test_tiny(tmp_path):
    path = _save(_rgb(63, 200), tmp_path / "tiny.png")
    _expect_sample_error(path, "63x200", "smaller than 64 px")
    assert open_image(_save(_rgb(64, 64), tmp_path / "ok.png")).size == (64, 64)


def test_huge_is_refused_from_the_header(tmp_path):
    # The header claims 8193 px; the pixel data is garbage, so a decode would fail differently.
    path = tmp_path / "huge.png"
    path.write_bytes(_png(8193, 100, 8, 2, b"\x00" * 10))
    _expect_sample_error(path, "8193x100", "larger than")


def test_decompression_bomb(tmp_path):
    # 100000 x 100000 px trips Pillow's own decompression bomb check as soon as the file is opened.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png(100_000, 100_000, 8, 2, b"\x00" * 10))
    _expect_sample_error(path, "too many pixels", max_side=200_000)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = _save(_rgb(100, 80), tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert open_image(path).size == (80, 100)


# ---------------------------------------------------------------------------------------------
# to_tensor: THE resize policy


def _bands(width: int, height: int) -> Image.Image:
    """Green outer quarters, red and blue inner quarters (left to right), as a horizontal strip."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    quarter = width // 4
    pixels[:, :quarter] = (0, 255, 0)
    pixels[:, quarter : 2 * quarter] = (255, 0, 0)
    pixels[:, 2 * quarter : 3 * quarter] = (0, 0, 255)
    pixels[:, 3 * quarter :] = (0, 255, 0)
    return Image.fromarray(pixels)


def test_to_tensor_centre_crop_exact():
    # 100x50 at R=50: no resampling, the crop keeps exactly columns 25..74 (red, then blue).
    tensor = to_tensor(_bands(100, 50), 50)
    assert tensor.shape == (3, 50, 50) and tensor.dtype == torch.float32
    assert torch.equal(tensor[:, :, :25], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 50, 25))
    assert torch.equal(tensor[:, :, 25:], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 50, 25))


def test_to_tensor_resizes_short_side_then_crops():
    tensor = to_tensor(_bands(100, 50), 32)
    assert tensor.shape == (3, 32, 32)
    assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    # Away from the band edges (where bicubic blends neighbours), left is red and right is blue.
    left, right = tensor[:, :, 2:13], tensor[:, :, 19:30]
    assert left[0].min() > 0.9 and left[1:].max() < 0.1
    assert right[2].min() > 0.9 and right[:2].max() < 0.1
    # The green outer quarters were cropped away.
    assert tensor[1].max() < 0.2


def test_to_tensor_tall_image_and_upscaling():
    tall = _bands(100, 50).transpose(Image.Transpose.ROTATE_90)  # 50 wide, 100 high
    assert to_tensor(tall, 128).shape == (3, 128, 128)


def test_to_tensor_requires_rgb():
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(Image.new("L", (80, 80)), 64)


# ---------------------------------------------------------------------------------------------
# manifests


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A dataset root with three good images."""
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    for seed, name in enumerate(["c1", "s1", "s2"]):
        _save(_rgb(96, 80, seed=seed), root / "images" / f"{name}.png")
    return root


def _rows(root: Path, **overrides) -> list[dict]:
    rows = [
        {
            "sample_id": "c1__s1",
            "content": "images/c1.png",
            "reference": "images/s1.png",
            "prompt": "a photo",
            "domain": "animals",
            "split": "test",
            "content_sha256": sha256_file(root / "images/c1.png"),
            "reference_sha256": sha256_file(root / "images/s1.png"),
            "style_label": "impressionism",
        },
        {
            "sample_id": "c1__s1+s2",
            "content": "images/c1.png",
            "reference": "images/s1.png;images/s2.png",
            "prompt": None,
            "domain": "animals",
            "split": "test",
            "content_sha256": None,
            "reference_sha256": None,
            "style_label": None,
        },
    ]
    rows[0].update(overrides)
    return rows


def test_good_sample(dataset):
    manifest = Manifest.load(write_manifest(_rows(dataset), dataset / "manifest.csv"))
    assert len(manifest) == 2 and manifest.sample_ids == ["c1__s1", "c1__s1+s2"]
    assert manifest.root == dataset.resolve()
    assert manifest.sha256 == sha256_file(dataset / "manifest.csv")
    sample = manifest.load_sample("c1__s1", 48)
    assert sample.content.shape == (3, 48, 48) and sample.content.dtype == torch.float32
    assert 0.0 <= float(sample.content.min()) and float(sample.content.max()) <= 1.0
    assert len(sample.references) == 1 and sample.reference.shape == (3, 48, 48)
    assert sample.prompt == "a photo" and sample.domain == "animals"
    assert sample.input_sha256 == {
        "content": sha256_file(dataset / "images/c1.png"),
        "reference": sha256_file(dataset / "images/s1.png"),
    }
    assert sample.meta == {"split": "test", "style_label": "impressionism"}
    assert torch.equal(sample.content, to_tensor(open_image(dataset / "images/c1.png"), 48))


def test_multi_reference_and_computed_hashes(dataset):
    manifest = Manifest.load(write_manifest(_rows(dataset), dataset / "manifest.csv"))
    sample = manifest.load_sample("c1__s1+s2", 32)
    assert len(sample.references) == 2
    assert not torch.equal(sample.references[0], sample.references[1])
    assert sample.prompt is None
    assert sample.input_sha256 == {
        "content": sha256_file(dataset / "images/c1.png"),
        "reference_0": sha256_file(dataset / "images/s1.png"),
        "reference_1": sha256_file(dataset / "images/s2.png"),
    }


def _mask(root: Path, name: str, left_white: bool) -> str:
    """A 96x80 greyscale mask, white on the left (or right) half; returns its manifest path."""
    array = np.zeros((80, 96), np.uint8)
    if left_white:
        array[:, :48] = 255
    else:
        array[:, 48:] = 255
    Image.fromarray(array, mode="L").save(root / "images" / name)
    return f"images/{name}"


def test_masks_load_with_the_image_geometry_and_hashes(dataset):
    content_mask = _mask(dataset, "c1_mask.png", left_white=True)
    reference_mask = _mask(dataset, "s1_mask.png", left_white=False)
    rows = _rows(dataset, content_mask=content_mask, reference_mask=reference_mask,
                 content_mask_sha256=sha256_file(dataset / content_mask))
    sample = Manifest.load(write_manifest(rows, dataset / "manifest.csv")).load_sample("c1__s1", 40)
    assert set(sample.masks) == {"content", "reference"}
    # 96x80 -> short side 40 gives 48x40, the centre crop drops 4 columns each side: 20 of 40 left
    expected = torch.zeros(1, 40, 40)
    expected[..., :20] = 1
    assert torch.equal(sample.masks["content"], expected)
    assert torch.equal(sample.masks["reference"], 1 - expected)
    assert sample.input_sha256["content_mask"] == sha256_file(dataset / content_mask)
    assert "content_mask" not in sample.meta and "reference_mask" not in sample.meta
    assert Manifest.load(dataset / "manifest.csv").load_sample("c1__s1+s2", 40).masks == {}


@pytest.mark.parametrize("problem", ["count", "hash", "missing"])
def test_bad_masks_fail_the_sample_with_a_reason(dataset, problem):
    mask = _mask(dataset, "m.png", left_white=True)
    overrides = {
        "count": {"reference_mask": f"{mask};{mask}"},
        "hash": {"content_mask": mask, "content_mask_sha256": "0" * 64},
        "missing": {"content_mask": "images/nowhere.png"},
    }[problem]
    manifest = Manifest.load(write_manifest(_rows(dataset, **overrides), dataset / "manifest.csv"))
    expected = {"count": "one mask per reference", "hash": "sha256 mismatch", "missing": "does not exist"}[problem]
    with pytest.raises(SampleError, match=expected) as info:
        manifest.load_sample("c1__s1", 40)
    assert "mask" in str(info.value)
    assert manifest.load_sample("c1__s1+s2", 40).content.shape == (3, 40, 40)


def test_csv_and_parquet_load_the_same(dataset):
    csv = Manifest.load(write_manifest(_rows(dataset), dataset / "manifest.csv"))
    parquet = Manifest.load(write_manifest(_rows(dataset), dataset / "manifest.parquet"))
    assert csv.sample_ids == parquet.sample_ids
    for sample_id in csv.sample_ids:
        assert csv.row(sample_id) == parquet.row(sample_id)
        a, b = csv.load_sample(sample_id, 32), parquet.load_sample(sample_id, 32)
        assert torch.equal(a.content, b.content) and a.input_sha256 == b.input_sha256


def test_root_override(dataset, tmp_path):
    elsewhere = tmp_path / "manifests" / "m.csv"
    manifest = Manifest.load(write_manifest(_rows(dataset), elsewhere), root=dataset)
    assert manifest.load_sample("c1__s1", 32).content.shape == (3, 32, 32)


def test_write_manifest_is_atomic_and_deterministic(dataset):
    path = write_manifest(_rows(dataset), dataset / "manifest.csv")
    first = path.read_bytes()
    write_manifest(_rows(dataset), path)
    assert path.read_bytes() == first
    assert not [p for p in dataset.iterdir() if p.name.endswith(".tmp")]
    header = first.decode().splitlines()[0].split(",")
    assert header[:3] == ["sample_id", "content", "reference"] and header[-1] == "style_label"


def test_bad_sample_fails_alone(dataset):
    rows = _rows(dataset, content="images/missing.png")
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    with pytest.raises(SampleError, match="c1__s1, content: image .*missing.png does not exist"):
        manifest.load_sample("c1__s1", 32)
    assert len(manifest.load_sample("c1__s1+s2", 32).references) == 2


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_path_outside_root(dataset, tmp_path, kind):
    outside = _save(_rgb(), tmp_path / "outside.png")
    if kind == "dotdot":
        reference = "../outside.png"
    elif kind == "absolute":
        reference = str(outside)
    else:
        (dataset / "link.png").symlink_to(outside)
        reference = "link.png"
    rows = _rows(dataset, reference=reference, reference_sha256=None)
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    with pytest.raises(SampleError, match="outside the dataset root"):
        manifest.load_sample("c1__s1", 32)


def test_paths_inside_root_may_be_absolute_or_use_dotdot(dataset):
    rows = _rows(dataset, content=str(dataset / "images/c1.png"), reference="images/../images/s1.png")
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    assert manifest.load_sample("c1__s1", 32).content.shape == (3, 32, 32)


def test_hash_mismatch(dataset):
    wrong = "ab" * 32
    rows = _rows(dataset, content_sha256=wrong)
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    with pytest.raises(SampleError) as info:
        manifest.load_sample("c1__s1", 32)
    message = str(info.value)
    assert "sha256 mismatch" in message and wrong[:12] in message
    assert sha256_file(dataset / "images/c1.png")[:12] in message


def test_reference_hash_mismatch_in_multi_reference(dataset):
    good = sha256_file(dataset / "images/s1.png")
    rows = _rows(dataset)
    rows[1]["reference_sha256"] = f"{good};{'00' * 32}"
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    with pytest.raises(SampleError, match="reference_1: sha256 mismatch"):
        manifest.load_sample("c1__s1+s2", 32)


def test_reference_hash_count_mismatch(dataset):
    rows = _rows(dataset)
    rows[1]["reference_sha256"] = sha256_file(dataset / "images/s1.png")
    manifest = Manifest.load(write_manifest(rows, dataset / "manifest.csv"))
    with pytest.raises(SampleError, match="2 reference file.* but 1 reference_sha256"):
        manifest.load_sample("c1__s1+s2", 32)


def test_unknown_sample_id(dataset):
    manifest = Manifest.load(write_manifest(_rows(dataset), dataset / "manifest.csv"))
    with pytest.raises(KeyError, match="nope"):
        manifest.load_sample("nope", 32)


def test_manifest_duplicate_ids(dataset):
    rows = _rows(dataset) + _rows(dataset)[:1]
    with pytest.raises(ManifestError, match="duplicate sample ids: c1__s1;"):
        Manifest.load(write_manifest(rows, dataset / "manifest.csv"))


def test_manifest_missing_column(dataset):
    rows = [{key: value for key, value in row.items() if key != "reference"} for row in _rows(dataset)]
    path = dataset / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="lacks the required column.* reference"):
        Manifest.load(path)


def test_manifest_empty(dataset):
    path = write_manifest([], dataset / "manifest.csv")
    assert path.read_text().strip() == "sample_id,content,reference"
    with pytest.raises(ManifestError, match="no rows"):
        Manifest.load(path)
    path.write_bytes(b"")
    with pytest.raises(ManifestError, match="empty"):
        Manifest.load(path)


def test_manifest_empty_sample_id(dataset):
    rows = _rows(dataset, sample_id="  ")
    with pytest.raises(ManifestError, match="empty sample_id .*line.* 2"):
        Manifest.load(write_manifest(rows, dataset / "manifest.csv"))


def test_manifest_unknown_extension_and_missing_file(dataset):
    path = dataset / "manifest.json"
    path.write_text("{}")
    with pytest.raises(ManifestError, match="unknown extension '.json'"):
        Manifest.load(path)
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.load(dataset / "absent.csv")


def test_manifest_unreadable_parquet(dataset):
    path = dataset / "manifest.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="cannot be read as Parquet"):
        Manifest.load(path)


# ---------------------------------------------------------------------------------------------
# the embedded demo set


def test_demo_manifest_loads_and_every_sample_verifies():
    manifest = Manifest.load(demo_manifest_path())
    assert manifest.root == DEMO_DIR and 6 <= len(manifest) <= 8
    multi = 0
    for sample_id in manifest.sample_ids:
        row = manifest.row(sample_id)
        assert row["content_sha256"] and row["reference_sha256"] and row["prompt"] and row["domain"]
        sample = manifest.load_sample(sample_id, 64)
        assert sample.content.shape == (3, 64, 64)
        assert sample.input_sha256["content"] == sha256_file(DEMO_DIR / row["content"])
        multi += len(sample.references) > 1
    assert multi == 1


def test_demo_files_are_small_licensed_and_distinct():
    files = [path for path in DEMO_DIR.iterdir() if path.is_file()]
    assert sum(path.stat().st_size for path in files) < 2 * 1024 * 1024
    licences = (DEMO_DIR / "LICENSES.md").read_text()
    for path in files:
        assert f"| {path.name} |" in licences, f"{path.name} has no licence entry"
    source = json.loads((DEMO_DIR / "source.json").read_text())
    styles = sorted(DEMO_DIR.glob("style_*.png"))
    assert source["counts"] == {
        "contents": len(list(DEMO_DIR.glob("content_*.png"))),
        "styles": len(styles),
        "samples": len(Manifest.load(demo_manifest_path())),
    }
    # Styles must differ enough in colour for colour/style metrics to tell them apart.
    means = [np.asarray(Image.open(path), dtype=np.float64).mean(axis=(0, 1)) / 255 for path in styles]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).max() > 0.1, (styles[i].name, styles[j].name)


def test_demo_script_reproduces_the_shipped_files(tmp_path):
    source = json.loads((DEMO_DIR / "source.json").read_text())
    here = {
        "scikit-image": skimage.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "pillow_zlib": features.version("zlib"),
        "pillow_zlib_ng": features.version("zlib_ng") if "zlib_ng" in features.features else None,
    }
    if source["versions"] != here:
        # PNG bytes depend on Pillow's zlib and pixels on these libraries: regenerating under other
        # versions may legitimately differ, and the shipped files stay valid (their hashes verify).
        pytest.skip(f"demo set made with {source['versions']}, this environment has {here}")
    out = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "data_prep.demo", "--out", str(out)], cwd=REPO_ROOT, check=True)
    shipped = {path.name: path.read_bytes() for path in DEMO_DIR.iterdir() if path.is_file()}
    made = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert sorted(made) == sorted(shipped)
    for name, data in shipped.items():
        assert made[name] == data, f"{name} differs from the shipped file; re-run python -m data_prep.demo"

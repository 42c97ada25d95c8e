"""Scripts that build dataset manifests (and the images they name) for semantix.

- `semantix-prep` (`data_prep.cli`): the evaluation sets of docs/datasets.md:
  `coco_wikiart` (and its StyleID manifest), `appearance`, `videos`, and `verify`;
  see docs/datasets.md.
- `python -m data_prep.demo`: the embedded demo set shipped in `semantix/data/demo/`.

Each script is deterministic given its seed and writes a sha256 per file; the harness itself only
reads the manifests they produce (see `semantix.data`).
"""

"""Methods cannot leak into each other within a process: after every other diffusion method has run
(attention processors, hooks, schedulers, caches), each one gives exactly what it gives as the
first and only method of a fresh process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from semantix.registry import METHODS

SHORT_JOINT = {"num_steps": 6, "skip_steps": 2, "step_ranges": [[0, 4], [0, 4]], "structure_every": 2,
               "structure_until": 1}
SETTINGS = {
    "semantix": {"num_steps": 3},
    "styleid": {"num_steps": 3},
    "stylegallery": {"inversion_steps": 2, "opt_steps": 2, "kmeans_n_init": 2, "k_max": 4, "dinov2_weights": "random",
                     "depth_model": "random"},
    "eye_for_an_eye": {**SHORT_JOINT, "stats_start_step": 2},
    "cross_image_attention": {**SHORT_JOINT, "adain_start_step": 2},
}
FRESH = textwrap.dedent("""
    import sys, torch
    from semantix.backbones import build_tiny
    from semantix.data import demo_manifest_path
    from semantix.data.manifest import Manifest
    from semantix.registry import METHODS
    name, sample_id, settings, cache, out = sys.argv[1:]
    sample = Manifest.load(demo_manifest_path()).load_sample(sample_id, 64)
    method = METHODS.build(name, **eval(settings), cache_inversions=False)
    method.prepare(build_tiny(), cache)
    torch.save(method(sample, 0).image, out)
""")


@pytest.fixture(scope="module")
def after_all_others(backbone, demo, tmp_path_factory):
    """Each method's output on its second turn, i.e. after all the others ran in this process."""
    sample = next(s for s in demo.values() if len(s.references) == 1)
    outputs = {}
    for _ in range(2):
        for name, settings in SETTINGS.items():
            method = METHODS.build(name, **settings, cache_inversions=False)
            method.prepare(backbone, tmp_path_factory.mktemp(name))
            outputs[name] = method(sample, 0).image
    return sample, outputs


@pytest.mark.parametrize("name", SETTINGS)
def test_a_run_after_every_other_method_equals_a_fresh_process(after_all_others, name, tmp_path):
    sample, outputs = after_all_others
    out_file = tmp_path / "fresh.pt"
    subprocess.run([sys.executable, "-c", FRESH, name, sample.sample_id, repr(SETTINGS[name]), str(tmp_path / "cache"),
                    str(out_file)], check=True)
    assert torch.equal(torch.load(out_file), outputs[name])

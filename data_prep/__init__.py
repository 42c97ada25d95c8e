"""Scripts that build dataset manifests (and, for the demo set, the images) for semantix.

Each script is deterministic given its seed and writes a sha256 per file; the harness itself only
reads the manifests they produce (see `semantix.data`).
"""

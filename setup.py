"""The package list, the one thing pyproject.toml cannot say: every package under semantix/ and data_prep/,
plus the top-level conf/ shipped inside the package as `semantix/conf`. conf/ stays the source (a checkout
reads it in place); an installed wheel reads its copy (`semantix.runtime.config_dir`). The rest of the
metadata is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["semantix", "semantix.*", "data_prep", "data_prep.*"]), "semantix.conf"],
    package_dir={"semantix.conf": "conf"},
)

"""Packaging glue pyproject.toml cannot say: the top-level ``search_spaces/`` folder (the one
source of the built-in spaces) ships inside the package as ``nasfe/search_spaces/*.yaml``."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["nasfe", "nasfe.*"]) + ["nasfe.search_spaces"],
    package_dir={"nasfe.search_spaces": "search_spaces"},
    package_data={
        "nasfe.search_spaces": ["*.yaml"],
        # the packaged CPU-trained default model of `nasfe restore` / `nasfe evaluate`
        "nasfe.pretrained": ["cpu_default.pt", "NOTICE"],
        # the pretrained MobileFaceNet (Apache-2.0), the paper space's identity backbone
        "nasfe.identity.packaged": ["mobilefacenet.pt", "LICENSE", "NOTICE"],
    },
)

"""The package list: every package under src/, plus the config tree at the repository root
(conf/), shipped as ``medgrounder.conf`` (package-dir in pyproject.toml maps it). A find
directive in pyproject.toml cannot add a package that lives outside its ``where``."""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "medgrounder.conf"])

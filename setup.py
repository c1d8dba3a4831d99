"""Maps the repository's folders to lorafleet's import names (see DESIGN.md, "Layout").

pyproject.toml holds all metadata; this file only lists the packages, because setuptools
cannot discover sub-packages under a `package-dir` mapping on its own.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "lorafleet": "sdk",
    "lorafleet.controlplane": "controlplane",
    "lorafleet.runtime": "runtime",
    "lorafleet.kernels": "kernels",
    "lorafleet.migrations": "migrations",
}


def _packages() -> list[str]:
    names = []
    for name, folder in FOLDERS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    return names


setup(package_dir=FOLDERS, packages=_packages())

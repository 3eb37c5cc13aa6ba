"""Build hook: the wheel carries the repository's specs and profiles as package data.

``search_spaces/*.yaml`` and ``hwprofiles/*.json`` stay where the README's commands expect them
in a checkout; building copies them into ``nas/_shipped/`` of the built package, which
``nas.shipped`` reads (and ``nas init DIR`` writes out) in an installed package.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = {"search_spaces": "*.yaml", "hwprofiles": "*.json"}


class BuildWithShipped(build_py):
    def run(self):
        super().run()
        for folder, pattern in SHIPPED.items():
            target = Path(self.build_lib) / "nas" / "_shipped" / folder
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted((ROOT / folder).glob(pattern)):
                shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": BuildWithShipped})

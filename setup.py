"""Build hook: the wheel carries the repository's experiment configs and notebooks.

Everything else about the package is in pyproject.toml. ``experiments/configs`` and
``experiments/notebooks`` stay the one copy in git; building a wheel copies every file of them
into ``noisyfr/_experiments/`` of the built package, where :mod:`noisyfr.shipped` finds them.
An editable install (and the repository on ``PYTHONPATH``) reads ``experiments/`` in place.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: folders of experiments/ the wheel carries, and the file suffix taken from each
SHIPPED = {"configs": ".yaml", "notebooks": ".ipynb"}


class BuildWithExperiments(build_py):
    """``build_py``, then copy ``experiments/<folder>/*<suffix>`` to ``noisyfr/_experiments/``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads experiments/ in place
            return
        for folder, suffix in SHIPPED.items():
            target = Path(self.build_lib) / "noisyfr" / "_experiments" / folder
            self.mkpath(str(target))
            for src in sorted((ROOT / "experiments" / folder).glob(f"*{suffix}")):
                self.copy_file(str(src), str(target / src.name))


setup(cmdclass={"build_py": BuildWithExperiments})

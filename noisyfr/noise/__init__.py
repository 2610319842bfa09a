"""Label noise: what to inject (:class:`NoiseSpec`, the noise types), injecting it
(:func:`inject` -> :class:`Manifest`), manifests on disk (:func:`read_manifest`,
:func:`write_manifest`, :func:`fingerprint`) and a dataset seen through a manifest
(:class:`NoisyDataset`). See docs/noise.md.

Names are imported lazily from their submodules so that ``import noisyfr.noise`` stays cheap.
"""
from __future__ import annotations

from noisyfr.lazy import lazy_getattr
from noisyfr.noise.spec import CLOSED_MODES, NOISE_TYPES, NoiseSpec, cli_flag, config_key

_LAZY = {
    "inject": "noisyfr.noise.inject",
    "inject_to": "noisyfr.noise.inject",
    "Manifest": "noisyfr.noise.inject",
    "summary": "noisyfr.noise.inject",
    "read_manifest": "noisyfr.noise.manifest",
    "write_manifest": "noisyfr.noise.manifest",
    "read_meta": "noisyfr.noise.manifest",
    "fingerprint": "noisyfr.noise.manifest",
    "NoisyDataset": "noisyfr.noise.dataset",
}

__all__ = ["NoiseSpec", "NOISE_TYPES", "CLOSED_MODES", "cli_flag", "config_key", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)

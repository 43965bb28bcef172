"""Electron shot noise shared by the image, series and tilt simulators.

The sampler lives in :mod:`perovstem._poisson` (shared with the parametric bootstrap of
:mod:`perovstem.quantify.kinetics`, which must not import the simulator).
"""

from __future__ import annotations

from perovstem._poisson import shot_noise

__all__ = ["shot_noise"]

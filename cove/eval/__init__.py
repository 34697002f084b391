"""Measuring: metrics against ground truth, an image judge for ShapesWorld, benchmarks.

- ``metrics``: PCK, warp error (flicker), PSNR and edit fidelity;
- ``judge``: names the background, colours and shapes of a generated ShapesWorld image;
- ``bench``: the machine a figure was measured on, JSON that records it, and cost formulas.
"""

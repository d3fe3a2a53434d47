"""Per-layer features of a network for brain and behaviour analyses (``extract_features.py``).

* :mod:`analysis.features.layers`: the readable layers of a model (its own module names) with their
  output shapes, and forward hooks that keep chosen layers' outputs;
* :mod:`analysis.features.pooling`: what is kept per clip (mean / max / time / none) and view averaging;
* :mod:`analysis.features.projection`: a seeded sparse random projection to a fixed size;
* :mod:`analysis.features.manifest`: the per-layer entries of features.json (stored shape, axes, columns);
* :mod:`analysis.features.store`: the output folder (one memory-mapped .npy per layer, index.csv,
  features.json), written by any number of processes and resumable;
* :mod:`analysis.features.exports`: the same features as other tools read them (thingsvision's
  file_names.txt, Net2Brain's consolidated per-layer .npz);
* :mod:`analysis.features.provenance`: digests, versions and memory figures for the manifest.

Imports only torch, numpy, pandas and ``utils``: the entry point composes it with
``datasets`` and ``resnet3d``.
"""

"""The analysis side of the project: what happens to a trained network's outputs and features
after inference, kept apart from the training plumbing in ``utils/`` and the training data in
``datasets/``.

* :mod:`analysis.features`: per-layer features of a network (layers, pooling, random projection,
  the output folder ``extract_features.py`` writes);
* :mod:`analysis.extracted_features`: that folder read back, in column chunks;
* :mod:`analysis.human_ratings`: human rating tables (long / wide form);
* :mod:`analysis.gram`, :mod:`analysis.ridge_cv`, :mod:`analysis.rsa`: the cross-validated
  encoding model and representational similarity analysis of ``align_features.py``;
* :mod:`analysis.reliability`: human agreement, noise ceilings and the model's agreement with
  people (``evaluate.py`` and ``align_features.py``).

Builds only on ``utils``; the entry points (and ``inference``) import it, never ``resnet3d``,
``losses``, ``datasets`` or ``utils``.
"""

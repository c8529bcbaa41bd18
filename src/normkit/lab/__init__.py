"""normkit lab: train the same network with each normalization and measure the documents' claims.

Entry point: ``normkit lab [compare|batch-size|ics|scale-invariance|lrn-effect]``
(see :mod:`normkit.lab.cli`). Built only on normkit's public API
(``normkit.create_norm``).
"""

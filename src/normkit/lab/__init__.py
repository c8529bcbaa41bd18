"""normkit lab: train the same network with each normalization and measure the documents' claims.

Entry point: ``normkit lab [compare|batch-size|ics|scale-invariance|lrn-effect|scaling|report]``
(see :mod:`normkit.lab.cli`). Built only on normkit's public API
(``normkit.create_norm``, ``normkit.preprocessing``, ``normkit.functional``).
``scaling`` (:mod:`normkit.lab.scaling`) studies the input data's scaling;
``report`` (:mod:`normkit.lab.report`) puts every claim on one HTML page.
"""

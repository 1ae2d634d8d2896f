"""foundir_model.release: the release's own files, read, checked and converted.

``files`` reads ``model-2000.pt`` and the specialists' ``.pth`` files (``weights_only``, sizes
bounded first, widths from tensor shapes); ``experts`` is the release's specialists (how each
is built, sized, routed by test id or degradation type, stored); ``lowlight`` is the low-light
specialist's procedure; ``seed`` replays the release's start-noise draws for ``--seed``;
``convert`` is the ``convert-release`` command (docs/training.md, "Using the released models").

May import: ``foundir_model.config``, ``foundir_model.diffusion``, ``foundir_model.model_bounds``
and ``foundir_model.nets``.

Its commands also import: ``foundir_model.checkpoint`` (convert-release writes one).
"""

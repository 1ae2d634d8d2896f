"""foundir_model.nets: the networks, in plain PyTorch, with the release's parameter names.

``unet`` is the generalist's conditional UNet and ``attention`` its attention in bounded
blocks; ``restormer`` (weather) and ``wavemamba`` with its ``selective_scan`` (low light) are
the release's specialist networks; ``specialists`` holds the small trainable experts and the
degradation classifier (paper section 4.3). Networks only: reading the release's files is
``foundir_model.release``, running them on images is ``foundir_model.restore``.

May import: ``foundir_model.config`` and ``foundir_model.model_bounds`` (stored weights checked
against a config before anything is built).
"""

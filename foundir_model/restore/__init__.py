"""foundir_model.restore: restoring images of any size, tile by tile, within a memory budget.

``restorer`` runs the generalist, the small experts and the release's specialists; ``tiling``
places the tiles (the release's one-pass rule, blend weights); ``budget`` picks the tile batch
and attention block for ``--max-memory``; ``precision`` the autocast dtype; ``images`` reads
and writes image files; ``outputs`` names outputs and protects inputs; ``progress`` the bars;
``resume`` the per-image records; ``shard_run`` the ranks of a ``torchrun`` job; ``infer`` is
``foundir-restore`` (docs/inference.md).

May import: ``foundir_model.config``, ``foundir_model.memory``, ``foundir_model.nets`` and
``foundir_model.release``.

Its commands also import: ``foundir_model.checkpoint``, ``foundir_model.flags`` and
``foundir_model.threads``.
"""

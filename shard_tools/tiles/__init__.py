"""shard_tools.tiles: lossless aligned LQ/GT training tiles cut from a packed folder's frames.

``plan`` is the grid and the pure tile plan, ``codec`` the encoders of the lossless tile codecs
(readers decode them all), ``index`` puts finished tile parts into the index and manifest,
``tiler`` is the ``tile`` command (docs/packing.md, "Training tiles").

May import: ``shard_tools.pack`` (the tar writer, index parts, the output rules, merge).

Its commands also import: ``shard_tools.publish`` (the tiled folder's card and Croissant file).
"""

"""shard_tools.pack: pair records -> tar shards, index parts, and the merged folder.

``plan`` cuts the records into shards (every job computes the same plan); ``build`` reads,
probes (``probe``) and writes one shard (``writer``: reproducible tars with member offsets);
``parts`` holds the index part that finishes a shard and the done/stale rules resume reads;
``runner`` runs the builds in worker processes; ``guard`` keeps to folders that are ours, with
one writer lock; ``out_store`` packs into object storage; ``scheduler`` finds a cluster job's
slice; ``merge`` and ``index_write`` write the one index, its parts and key lookup, the
manifest; ``summary`` says what happened. ``packer`` is the ``pack`` command.

May import: ``shard_tools.ingest``.

Its commands also import: ``shard_tools.publish`` (merge writes the card and Croissant file)
and ``shard_tools.tiles`` (merge keeps a folder's tiles; ``pack --tile`` runs the tiler).
"""

"""shard_tools.publish: a packed folder described and sent where users read it.

``card`` writes the dataset card (``README.md``), ``croissant`` the ML Commons Croissant
metadata; ``push`` uploads a folder to any fsspec URL, ``hub`` to the Hugging Face Hub through
its commit API, ``items`` is what both send, manifest last (docs/release.md).

May import: ``shard_tools.pack`` (summaries) and ``shard_tools.inspect`` (the card's statistics).
"""

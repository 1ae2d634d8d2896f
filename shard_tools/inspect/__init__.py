"""shard_tools.inspect: reading a packed folder back: verify, stats, plots and previews.

``verify`` re-reads every shard against the manifest and index (``shard_check`` one shard,
``index_check`` the index streamed shard by shard); ``stats`` counts per type, class and
split, ``plot`` charts them; ``preview`` draws a contact sheet, ``preview_html`` a page. None
of them writes into the folder it reads.

May import: ``shard_tools.pack`` (the probe that checks images, the summaries).

Its commands also import: ``shard_tools.cli`` (``python -m shard_tools.inspect.preview``).
"""

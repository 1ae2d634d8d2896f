"""foundir_data.remote: where a packed folder lives and how its bytes come back.

``store`` is the one reader of a folder on disk, ``s3://``, ``http(s)://`` or the Hub (manifest,
index, whole files, byte ranges, shards as retried, resumable streams); ``retry`` decides what
is transient and how long to wait; ``cache`` keeps remote shards in a size-limited disk cache;
``locations`` turns a location string into a filesystem, a root URL and headers, never
printing a token (docs/streaming.md).

May import: ``foundir_data.errors``, ``foundir_data.format``, ``foundir_data.integrity`` and
``foundir_data.limits`` (every claimed size is checked before it is read).
"""

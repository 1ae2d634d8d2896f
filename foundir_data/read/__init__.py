"""foundir_data.read: pairs and index rows out of a packed folder, checked before they are handed on.

``reader`` is the one pair reader (index offsets -> one pread or range read -> xxh3/sha256
against the index); ``decode`` the one decoder (bytes -> exact uint8 pixels); ``access``
fetches one pair by key (``get_pair``); ``index_parts`` reads the index by parts (one shard's
rows, the shard of a key) so a lookup costs O(shards), not O(pairs) (docs/format.md).

May import: ``foundir_data.errors``, ``foundir_data.format``, ``foundir_data.integrity``,
``foundir_data.limits`` and ``foundir_data.remote``.
"""

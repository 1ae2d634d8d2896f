"""shard_tools.ingest: pack inputs -> pair records, before anything is read.

``sources`` says where inputs live (a folder, zip archives local or remote, a remote prefix),
``zips`` reads zip members in place with sanitised names and bounded directories, ``layouts``
recognises the four input layouts, ``lists`` reads the release's list files and CSV/Parquet
manifests, ``records`` holds the records every source becomes (``PairSpec``, ``Reject``) and
the path rules (docs/packing.md).

May import: foundir_data only, no other sub-package of this one.
"""

"""``python -m shard_tools``: the same CLI as the ``shard_tools`` console script."""

from shard_tools.cli import main

raise SystemExit(main())

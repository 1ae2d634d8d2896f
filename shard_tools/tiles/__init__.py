"""shard_tools.tiles.tiler: TODO."""

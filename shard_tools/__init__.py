"""shard_tools: pack paired LQ/GT image collections into FoundIR WebDataset shards."""

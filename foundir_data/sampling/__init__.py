"""foundir_data.sampling: TODO."""

"""foundir_data.output: TODO."""

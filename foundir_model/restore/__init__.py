"""foundir_model.restore: TODO."""

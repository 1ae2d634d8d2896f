"""foundir_model.eval: TODO."""

"""foundir_model.nets: TODO."""

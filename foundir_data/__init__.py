"""foundir_data: the packed FoundIR format and everything that reads it."""

__version__ = "0.1.0"

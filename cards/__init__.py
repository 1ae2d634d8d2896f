"""Dataset and model card templates (package data)."""

"""instructloop trainer: the background worker and the algorithms (torch, transformers)."""

"""Checkpoint conversion: restricted readers, hub download, key maps, dtype cast, writer."""

"""Matplotlib figures of every stage (one module per stage group)."""

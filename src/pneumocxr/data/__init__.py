"""Data ingestion, preprocessing and the prepared-array format every later stage reads."""

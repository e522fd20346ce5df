"""Audio analysis engine (placeholder package; being built)."""

"""Dataset preparation tools: noise injection, format conversion, synthetic data."""

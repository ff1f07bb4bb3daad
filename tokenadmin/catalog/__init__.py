"""The model catalog: per-model rates, which models an organization may use, and where
each model's requests go."""

"""`mmw2s eval`: zero-shot evaluation (see `run`, `tasks`, `metrics`, `scorers`, `adapters`)."""

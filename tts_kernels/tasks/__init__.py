"""Synthetic tasks with exact checkers (the embedded model's chained arithmetic)."""

"""Synthetic tasks with exact checkers (the embedded model's chained arithmetic) and the one problem type."""
from .problem import Problem, read_jsonl

__all__ = ["Problem", "read_jsonl"]

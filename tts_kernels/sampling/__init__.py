"""Fused budget-forcing sampler: API, reference and kernels."""
from .api import SampleOutput, sample
from .budget import BudgetForcing, BudgetState

__all__ = ["sample", "SampleOutput", "BudgetForcing", "BudgetState"]

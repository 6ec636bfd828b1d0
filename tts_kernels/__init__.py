"""tts_kernels: fused decoding kernels for test-time scaling of reasoning LLMs."""
from . import ops  # registers torch.ops.tts_kernels.*
from ._ext import available as extension_available
from .attention import (KVPool, KVPoolError, OutOfBlocksError, Parallelism, TreeAttentionPlan, plan_tree_attention,
                        tree_attention, tree_attention_parallelism)
from .sampling import BudgetForcing, BudgetState, SampleOutput, sample

__version__ = "0.1.0"
__all__ = ["sample", "SampleOutput", "BudgetForcing", "BudgetState", "extension_available",
           "tree_attention", "plan_tree_attention", "tree_attention_parallelism", "Parallelism", "TreeAttentionPlan",
           "KVPool", "KVPoolError", "OutOfBlocksError"]

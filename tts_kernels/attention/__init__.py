"""Tree attention: paged decode attention that reads KV shared by many sequences once."""
from .api import tree_attention, tree_attention_parallelism
from .kv_pool import KVPool, KVPoolError, OutOfBlocksError
from .plan import Parallelism, TreeAttentionPlan
from .planner import pad_plan, plan_tree_attention

__all__ = ["tree_attention", "plan_tree_attention", "pad_plan", "tree_attention_parallelism", "Parallelism",
           "TreeAttentionPlan", "KVPool",
           "KVPoolError", "OutOfBlocksError"]

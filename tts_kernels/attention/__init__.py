"""Tree attention: paged decode attention that reads KV shared by many sequences once."""
from .api import tree_attention
from .kv_pool import KVPool, KVPoolError, OutOfBlocksError
from .plan import TreeAttentionPlan
from .planner import pad_plan, plan_tree_attention

__all__ = ["tree_attention", "plan_tree_attention", "pad_plan", "TreeAttentionPlan", "KVPool",
           "KVPoolError", "OutOfBlocksError"]

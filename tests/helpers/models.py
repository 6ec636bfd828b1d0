"""Random-weight models built directly from a ModelConfig (no transformers, no files)."""
import torch

from tts_kernels.decode import Model, ModelConfig


def random_model(dtype=torch.float32, arch="llama", seed=0):
    cfg = ModelConfig(arch=arch, vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8, qkv_bias=arch == "qwen2", tie_word_embeddings=True,
                      eos_token_ids=(60,))
    g = torch.Generator().manual_seed(seed)
    w = {k: torch.randn(shape, generator=g) * (0.3 if len(shape) == 2 else 0.1) + (1.0 if "norm" in k else 0.0)
         for k, shape in cfg.expected_shapes().items()}
    return Model(cfg, w, dtype=dtype)

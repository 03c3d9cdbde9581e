"""The Llama shapes the GPU benchmarks share (the same as QLoRA.Bench.Gpu's RandomWeights) and a random bf16 model of one."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
}


def random_llama(shape):
    """A llama-`shape` model with random weights (seed 0), bf16, on the GPU."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                         tie_word_embeddings=False, **SHAPES[shape])
    with torch.device("cuda"):
        return LlamaForCausalLM(config).to(torch.bfloat16)

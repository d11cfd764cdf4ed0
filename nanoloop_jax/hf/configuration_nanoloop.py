"""NanoLoopConfig: the architecture of an exported nanoloop-jax / nanoLOOP looped GPT, under nanoLOOP's names.

A template module: nanoloop_jax.tools.export_hf copies it beside model.safetensors, and transformers loads it
with trust_remote_code=True. Every field can be set at load time like any config field, e.g.
AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True, n_loop=8) loops 8 times.
"""

from transformers import PretrainedConfig


class NanoLoopConfig(PretrainedConfig):
    """prelude blocks -> n_loop × recurrent block (input injection, RMSNorm) -> coda blocks -> tied head."""

    model_type = "nanoloop"
    # transformers' and lm-eval's generic names for the fields (lm-eval reads max_position_embeddings as the
    # longest context); the looped depth has no such name, so num_hidden_layers is left out on purpose.
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "max_position_embeddings": "block_size"}

    def __init__(
        self,
        block_size: int = 1024,  # longest context (learned positions: the wpe table's rows)
        vocab_size: int = 50304,
        n_prelude: int = 2,  # unique blocks run once before the loop
        n_block: int = 2,  # blocks of the weight-shared recurrent block
        n_coda: int = 2,  # unique blocks run once after the loop
        n_loop: int = 4,  # iterations of the recurrent block (test-time depth; per call: model(ids, n_loop=K))
        n_head: int = 12,
        n_embd: int = 768,
        bias: bool = False,  # biases in every Linear (not in the RMSNorms)
        input_injection: str = "inject",  # "inject" | "inject_random" (state starts as noise) | "passthrough"
        pos_encoding: str = "learned",  # "learned" (wpe table) | "rope" | "none" (NoPE)
        rope_theta: float = 10000.0,
        norm_eps: float = 1.1920928955078125e-07,  # torch.nn.RMSNorm's default for float32 (its machine epsilon)
        exit_gate: bool = False,  # a learned exit gate's weights are present (not used by forward)
        attn_window: int | None = None,  # sliding-window attention: keys at most attn_window - 1 back (None: all)
        # a plain forward builds no KV cache (lm-eval's scoring calls); generate() asks for one (use_cache=True)
        use_cache: bool = False,
        **kwargs,
    ) -> None:
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.n_prelude = n_prelude
        self.n_block = n_block
        self.n_coda = n_coda
        self.n_loop = n_loop
        self.n_head = n_head
        self.n_embd = n_embd
        self.bias = bias
        self.input_injection = input_injection
        self.pos_encoding = pos_encoding
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.exit_gate = exit_gate
        self.attn_window = attn_window
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(**kwargs)

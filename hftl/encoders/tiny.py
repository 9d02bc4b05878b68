"""Tiny random encoders (hidden 32, 2 layers) saved as ordinary model directories.

Tests and smoke runs point ``encoder.model`` at these directories, so every code path that loads a
Hub model also runs offline in seconds. Weights are random: accuracy numbers from them mean nothing.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

import torch

TinyKind = Literal["bert", "wav2vec2", "hubert", "vit"]
_SPEECH = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 4),
    conv_kernel=(10, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    layerdrop=0.0,  # random layer skipping would make tiny-model tests flaky
    do_stable_layer_norm=True,
    feat_extract_norm="layer",
)


def _write_bert_tokenizer(path: Path) -> None:
    from transformers import BertTokenizerFast

    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = "the a an is it was good bad great not movie film book very and of to this that".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters), *words]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    # transformers 5 ignores `vocab_file=`: pass the mapping itself.
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(path)


def save_tiny_encoder(kind: TinyKind, path: str | Path, *, seed: int = 0) -> Path:
    """Writes a tiny random ``kind`` model with its processor to ``path`` and returns the path.

    Example:
        >>> from hftl.encoders import TextEncoder
        >>> enc = TextEncoder(str(save_tiny_encoder("bert", tmp_path / "bert")))  # doctest: +SKIP
    """
    import transformers as tf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "bert":
        _write_bert_tokenizer(path)
        vocab_size = len(tf.AutoTokenizer.from_pretrained(path))
        config = tf.BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128,
        )  # fmt: skip
    elif kind in ("wav2vec2", "hubert"):
        config = (tf.Wav2Vec2Config if kind == "wav2vec2" else tf.HubertConfig)(**_SPEECH)
        tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(path)
    elif kind == "vit":
        config = tf.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8, num_channels=3,
        )  # fmt: skip
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    else:
        raise ValueError(f"tiny encoder kind must be one of bert, wav2vec2, hubert, vit; got {kind!r}")
    tf.AutoModel.from_config(config).save_pretrained(path)
    return path

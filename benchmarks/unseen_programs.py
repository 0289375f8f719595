"""Healthy training programs of model families that deepdiag's rules and the real-fault bases never saw.

Tiny models from the families people train: transformers models built from a config (encoders,
encoder-decoders, causal LMs, vision models; no weights are downloaded) and plain-PyTorch transformers,
CNNs, RNNs, MLPs. Each reuses the real-fault benchmark's data, ``Program`` and loop
(``benchmarks/real_faults``) and learns on every seed within 1-20 s on one CPU thread. Sequence
classifiers read ``marker_tokens`` (chance 0.25), causal LMs ``bigram_tokens`` (chance 1/16, best 0.81),
vision models the 8x8 digits as images, MLPs the digits, breast-cancer or teacher sets.
"""
from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.real_faults.programs import (
    LM_VOCAB,
    MARK_CLASSES,
    MARK_LEN,
    MARK_VOCAB,
    Data,
    Logits,
    Program,
    bigram_tokens,
    marker_tokens,
    opt,
    sklearn_data,
    token_cross_entropy,
)

PAD = MARK_VOCAB  # one id past the marker vocabulary, used as padding (it never occurs in the data)


class Pixels(nn.Module):
    """A transformers vision model on the 1x8x8 digits, upsampled bilinearly to size x size."""

    def __init__(self, hf: nn.Module, size: int):
        super().__init__()
        self.hf, self.size = hf, size

    def forward(self, x):
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.hf(pixel_values=x).logits


class EosLogits(nn.Module):
    """A sequence classifier that pools at the EOS token (BART, T5): EOS is appended to every sequence."""

    def __init__(self, hf: nn.Module, eos: int):
        super().__init__()
        self.hf, self.eos = hf, eos

    def forward(self, x):
        eos = torch.full((x.shape[0], 1), self.eos, dtype=x.dtype)
        return self.hf(input_ids=torch.cat([x, eos], dim=1)).logits


# ---- transformers: sequence classification (marker_tokens) ----

def roberta() -> nn.Module:
    """RoBERTa: post-LN BERT encoder with padding-offset positions."""
    from transformers import RobertaConfig, RobertaForSequenceClassification
    cfg = RobertaConfig(vocab_size=MARK_VOCAB + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=MARK_VOCAB + 21, type_vocab_size=1,
                        pad_token_id=PAD, bos_token_id=None, eos_token_id=None, num_labels=MARK_CLASSES)
    return Logits(RobertaForSequenceClassification(cfg))


def distilbert() -> nn.Module:
    """DistilBERT: a BERT encoder without token types or pooler."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification
    cfg = DistilBertConfig(vocab_size=MARK_VOCAB + 1, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=32, pad_token_id=PAD, num_labels=MARK_CLASSES)
    return Logits(DistilBertForSequenceClassification(cfg))


def albert() -> nn.Module:
    """ALBERT: factorised embeddings (16 -> 32) and one layer's weights shared across depth."""
    from transformers import AlbertConfig, AlbertForSequenceClassification
    cfg = AlbertConfig(vocab_size=MARK_VOCAB + 1, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                       type_vocab_size=1, pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
                       num_labels=MARK_CLASSES)
    return Logits(AlbertForSequenceClassification(cfg))


def electra() -> nn.Module:
    """ELECTRA discriminator: a BERT encoder with a two-layer GELU classification head."""
    from transformers import ElectraConfig, ElectraForSequenceClassification
    cfg = ElectraConfig(vocab_size=MARK_VOCAB + 1, embedding_size=32, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                        type_vocab_size=1, pad_token_id=PAD, num_labels=MARK_CLASSES)
    return Logits(ElectraForSequenceClassification(cfg))


def deberta() -> nn.Module:
    """DeBERTa-v2: disentangled attention over relative positions only (no absolute position input)."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification
    cfg = DebertaV2Config(vocab_size=MARK_VOCAB + 1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=32, type_vocab_size=0,
                          relative_attention=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                          position_buckets=8, max_relative_positions=-1, pad_token_id=PAD,
                          num_labels=MARK_CLASSES)
    return Logits(DebertaV2ForSequenceClassification(cfg))


def bart() -> nn.Module:
    """BART encoder-decoder, classifying from the decoder's state at EOS."""
    from transformers import BartConfig, BartForSequenceClassification
    cfg = BartConfig(vocab_size=MARK_VOCAB + 3, d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, max_position_embeddings=32, pad_token_id=PAD,
                     bos_token_id=PAD + 1, eos_token_id=PAD + 2, decoder_start_token_id=PAD + 2,
                     forced_eos_token_id=None, num_labels=MARK_CLASSES)
    return EosLogits(BartForSequenceClassification(cfg), PAD + 2)


def t5() -> nn.Module:
    """T5 encoder-decoder (RMSNorm, relative position buckets), classifying at EOS."""
    from transformers import T5Config, T5ForSequenceClassification
    cfg = T5Config(vocab_size=MARK_VOCAB + 2, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=PAD, eos_token_id=PAD + 1, decoder_start_token_id=PAD,
                   num_labels=MARK_CLASSES, classifier_dropout=0.0)
    return EosLogits(T5ForSequenceClassification(cfg), PAD + 1)


# ---- transformers: causal LMs (bigram_tokens) ----

LLAMA_LIKE = {"vocab_size": LM_VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "max_position_embeddings": 32, "bos_token_id": None,
              "eos_token_id": None, "pad_token_id": None}


def llama() -> nn.Module:
    """Llama: pre-RMSNorm, SwiGLU, rotary positions."""
    from transformers import LlamaConfig, LlamaForCausalLM
    return Logits(LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, **LLAMA_LIKE)))


def qwen2() -> nn.Module:
    """Qwen2: Llama-like with grouped-query attention (2 key-value heads) and tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **LLAMA_LIKE)
    return Logits(Qwen2ForCausalLM(cfg))


def mistral() -> nn.Module:
    """Mistral: Llama-like with grouped-query attention (2 key-value heads), no sliding window."""
    from transformers import MistralConfig, MistralForCausalLM
    cfg = MistralConfig(num_key_value_heads=2, sliding_window=None, **LLAMA_LIKE)
    return Logits(MistralForCausalLM(cfg))


def opt_lm() -> nn.Module:
    """OPT: pre-LN decoder with ReLU feed-forward and learned offset positions."""
    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(vocab_size=LM_VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=32, word_embed_proj_dim=32, pad_token_id=None, bos_token_id=None,
                    eos_token_id=None)
    return Logits(OPTForCausalLM(cfg))


def gptneo() -> nn.Module:
    """GPT-Neo: GPT-2-like, alternating global and local (window 8) attention."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM
    cfg = GPTNeoConfig(vocab_size=LM_VOCAB, max_position_embeddings=32, hidden_size=32, num_layers=2,
                       attention_types=[[["global", "local"], 1]], num_heads=4, intermediate_size=64,
                       window_size=8, bos_token_id=None, eos_token_id=None)
    return Logits(GPTNeoForCausalLM(cfg))


# ---- transformers: vision (digits as images) ----

def vit() -> nn.Module:
    """ViT: 4x4 patches of a 16x16 image, CLS token, pre-LN encoder."""
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, num_labels=10)
    return Pixels(ViTForImageClassification(cfg), 16)


def swin() -> nn.Module:
    """Swin: shifted-window attention (window 4) in two stages with patch merging."""
    from transformers import SwinConfig, SwinForImageClassification
    cfg = SwinConfig(image_size=16, patch_size=2, num_channels=1, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                     window_size=4, num_labels=10)
    return Pixels(SwinForImageClassification(cfg), 16)


def convnext() -> nn.Module:
    """ConvNeXt: depthwise 7x7 conv, LayerNorm, inverted GELU MLP, layer scale, two stages."""
    from transformers import ConvNextConfig, ConvNextForImageClassification
    cfg = ConvNextConfig(num_channels=1, patch_size=2, num_stages=2, hidden_sizes=[16, 32], depths=[2, 2],
                         num_labels=10)
    return Pixels(ConvNextForImageClassification(cfg), 16)


def hf_resnet() -> nn.Module:
    """transformers' ResNet: basic blocks with BatchNorm, two stages, on 32x32 images."""
    from transformers import ResNetConfig, ResNetForImageClassification
    cfg = ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                       layer_type="basic", downsample_in_first_stage=False, num_labels=10)
    return Pixels(ResNetForImageClassification(cfg), 32)


# ---- plain torch ----

class PreLN(nn.Module):
    """Pre-LN transformer encoder (GELU, final LayerNorm) -> mean over positions -> Linear."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(MARK_VOCAB, d)
        self.pos = nn.Parameter(torch.randn(MARK_LEN, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, activation="gelu", norm_first=True,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, MARK_CLASSES)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.pos).mean(dim=1))


class CausalLM(nn.Module):
    """Decoder-only LM: nn.TransformerEncoder (post-LN, ReLU) under a causal mask."""

    def __init__(self, d: int = 32, length: int = 16):
        super().__init__()
        self.embed, self.pos = nn.Embedding(LM_VOCAB, d), nn.Embedding(length, d)
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, LM_VOCAB)

    def forward(self, x):
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.embed(x) + self.pos(torch.arange(t))  # (batch, t, d)
        return self.head(self.blocks(h, mask=mask, is_causal=True))


class DecoderLM(nn.Module):
    """nn.TransformerDecoder (pre-LN, GELU) used decoder-only: the memory is the embedded sequence, both
    attentions causal."""

    def __init__(self, d: int = 32, length: int = 16):
        super().__init__()
        self.embed, self.pos = nn.Embedding(LM_VOCAB, d), nn.Embedding(length, d)
        layer = nn.TransformerDecoderLayer(d, 4, 64, dropout=0.1, activation="gelu", norm_first=True,
                                           batch_first=True)
        self.dec = nn.TransformerDecoder(layer, 2, norm=nn.LayerNorm(d))
        self.head = nn.Linear(d, LM_VOCAB)

    def forward(self, x):
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.embed(x) + self.pos(torch.arange(t))  # (batch, t, d)
        h = self.dec(h, h, tgt_mask=mask, memory_mask=mask, tgt_is_causal=True, memory_is_causal=True)
        return self.head(h)


def mobilenet() -> nn.Module:
    """MobileNet-v1-style: depthwise and pointwise convs with BatchNorm and ReLU6, a Hardswish stem."""
    def depthwise(c: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]

    def pointwise(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU6()]

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
        *depthwise(16, 1), *pointwise(16, 32), *depthwise(32, 2), *pointwise(32, 64),
        *depthwise(64, 1), *pointwise(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10))


def gn_cnn() -> nn.Module:
    """Three convs with GroupNorm and ReLU, global average pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


class BiLSTM(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM (dropout 0.1) -> mean over positions -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(MARK_VOCAB, 32)
        self.rnn = nn.LSTM(32, 64, num_layers=2, bidirectional=True, batch_first=True, dropout=0.1)
        self.head = nn.Linear(128, MARK_CLASSES)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))  # (batch, T, 128)
        return self.head(out.mean(dim=1))


class StackedLSTM(nn.Module):
    """Embedding -> nn.LSTM(num_layers=layers) -> mean over positions or last state -> Linear."""

    def __init__(self, layers: int, pool: str):
        super().__init__()
        self.pool = pool
        self.embed = nn.Embedding(MARK_VOCAB, 32)
        self.rnn = nn.LSTM(32, 64, num_layers=layers, batch_first=True)
        self.head = nn.Linear(64, MARK_CLASSES)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))  # (batch, T, 64)
        return self.head(out.mean(dim=1) if self.pool == "mean" else out[:, -1])


class TanhRNN(nn.Module):
    """Embedding -> Elman RNN (tanh) -> last state -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(MARK_VOCAB, 32)
        self.rnn = nn.RNN(32, 64, batch_first=True)
        self.head = nn.Linear(64, MARK_CLASSES)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out[:, -1])


class LSTMLM(nn.Module):
    """Embedding -> LSTM -> Linear at every position (a next-token LM)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(LM_VOCAB, 32)
        self.rnn = nn.LSTM(32, 64, batch_first=True)
        self.head = nn.Linear(64, LM_VOCAB)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))
        return self.head(out)


class TCN(nn.Module):
    """Temporal conv net: residual dilated Conv1d + ReLU (dilations 1, 2, 4, 8) -> mean -> Linear."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(MARK_VOCAB, d)
        self.convs = nn.ModuleList(nn.Conv1d(d, d, 3, padding=r, dilation=r) for r in (1, 2, 4, 8))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(4))
        self.head = nn.Linear(d, MARK_CLASSES)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)  # (batch, d, T)
        for conv, act in zip(self.convs, self.acts):
            h = h + act(conv(h))
        return self.head(h.mean(dim=2))


def autoencoder() -> nn.Module:
    """ReLU autoencoder 64-32-16-32-64 with a sigmoid output (pixels in [0, 1])."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, 64), nn.Sigmoid())


def mlp_ln_silu() -> nn.Module:
    """MLP with LayerNorm, SiLU and dropout 0.1 (two hidden layers of 128)."""
    return nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.SiLU(), nn.Dropout(0.1),
                         nn.Linear(128, 128), nn.LayerNorm(128), nn.SiLU(), nn.Dropout(0.1), nn.Linear(128, 10))


def wide_mlp() -> nn.Module:
    """One ReLU hidden layer of 1024 units."""
    return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 10))


def bce_mlp() -> nn.Module:
    """ReLU MLP with one logit per sample, for BCEWithLogitsLoss."""
    return nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1),
                         nn.Flatten(0))


def gelu_regression() -> nn.Module:
    """GELU MLP with one output, for a Huber (SmoothL1) regression."""
    return nn.Sequential(nn.Linear(10, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1))


# ---- data ----

@cache
def digits_pixels() -> Data:
    """Digits features min-max scaled to [0, 1] with the training set's range; the targets are the inputs
    (reconstruction, a regression)."""
    d = sklearn_data("digits")
    lo, hi = d.x_train.min(0).values, d.x_train.max(0).values

    def scale(t: Tensor) -> Tensor:
        return ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)

    x_train, x_val = scale(d.x_train), scale(d.x_val)
    return Data(x_train, x_train.clone(), x_val, x_val.clone(), "regression", None)


@cache
def cancer_binary() -> Data:
    """Breast cancer with float 0/1 targets, as BCEWithLogitsLoss takes them."""
    d = sklearn_data("breast_cancer")
    return Data(d.x_train, d.y_train.float(), d.x_val, d.y_val.float(), "classification", 2)


def above_zero(out: Tensor) -> Tensor:
    """Class of a single logit: 1 where it is positive."""
    return (out > 0).float()


# ---- programs ----

@cache
def programs() -> dict[str, Program]:
    """Every program by name (built once; the data are shared, never modified in place)."""
    marks, lm = marker_tokens(), bigram_tokens()
    images, digits = sklearn_data("digits", images=True), sklearn_data("digits")
    ce, tce = nn.CrossEntropyLoss(), token_cross_entropy
    sgd = opt("sgd", lr=0.05, momentum=0.9)
    adamw3 = opt("adamw", lr=3e-3)
    p = [
        Program("roberta", "hf-seqcls", roberta, marks, ce, adamw3, 32, 10),
        Program("distilbert", "hf-seqcls", distilbert, marks, ce, adamw3, 32, 10),
        Program("albert", "hf-seqcls", albert, marks, ce, opt("adamw", lr=1e-3), 32, 20),
        Program("electra", "hf-seqcls", electra, marks, ce, adamw3, 32, 10),
        Program("deberta_v2", "hf-seqcls", deberta, marks, ce, adamw3, 32, 10),
        Program("bart_cls", "hf-seqcls", bart, marks, ce, adamw3, 32, 10),
        Program("t5_cls", "hf-seqcls", t5, marks, ce, adamw3, 32, 10),
        Program("llama_lm", "hf-clm", llama, lm, tce, adamw3, 32, 6),
        Program("qwen2_lm", "hf-clm", qwen2, lm, tce, adamw3, 32, 6),
        Program("mistral_lm", "hf-clm", mistral, lm, tce, adamw3, 32, 6),
        Program("opt_lm", "hf-clm", opt_lm, lm, tce, adamw3, 32, 6),
        Program("gptneo_lm", "hf-clm", gptneo, lm, tce, adamw3, 32, 6),
        Program("vit", "hf-vision", vit, images, ce, opt("adamw", lr=1e-3), 32, 15),
        Program("swin", "hf-vision", swin, images, ce, adamw3, 32, 15),
        Program("convnext", "hf-vision", convnext, images, ce, opt("adamw", lr=1e-3), 32, 10),
        Program("hf_resnet", "hf-vision", hf_resnet, images, ce, sgd, 64, 8),
        Program("preln_encoder", "torch-transformer", PreLN, marks, ce, opt("adam", lr=1e-3), 32, 8),
        Program("causal_lm", "torch-transformer", CausalLM, lm, tce, opt("adam", lr=1e-3), 32, 6),
        Program("decoder_lm", "torch-transformer", DecoderLM, lm, tce, opt("adamw", lr=1e-3), 32, 6),
        Program("mobilenet", "cnn", mobilenet, images, ce, sgd, 64, 8),
        Program("gn_cnn", "cnn", gn_cnn, images, ce, opt("adam", lr=1e-3), 32, 8),
        Program("tcn", "cnn", TCN, marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("bilstm2", "rnn", BiLSTM, marks, ce, opt("adam", lr=3e-3), 32, 6),
        Program("lstm2_mean", "rnn", lambda: StackedLSTM(2, "mean"), marks, ce, opt("adam", lr=3e-3), 32, 8),
        Program("lstm3_last", "rnn", lambda: StackedLSTM(3, "last"), marks, ce, opt("adam", lr=3e-3), 32, 8),
        Program("tanh_rnn", "rnn", TanhRNN, marks, ce, opt("adam", lr=1e-3), 32, 10),
        Program("lstm_lm", "rnn", LSTMLM, lm, tce, opt("adam", lr=3e-3), 32, 6),
        Program("autoencoder", "mlp", autoencoder, digits_pixels(), nn.MSELoss(), opt("adam", lr=3e-3), 32, 30),
        Program("mlp_ln_silu", "mlp", mlp_ln_silu, digits, ce, opt("adamw", lr=1e-3), 32, 10),
        Program("wide_mlp_adamw", "mlp", wide_mlp, digits, ce, opt("adamw", lr=1e-3, weight_decay=0.05), 32, 10),
        Program("bce_mlp", "mlp", bce_mlp, cancer_binary(), nn.BCEWithLogitsLoss(), opt("adam", lr=1e-3), 32, 20,
                predict=above_zero),
        Program("gelu_regression", "regression", gelu_regression, sklearn_data("teacher"), nn.SmoothL1Loss(),
                adamw3, 32, 15),
    ]
    return {q.name: q for q in p}

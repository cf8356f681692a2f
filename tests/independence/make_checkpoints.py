#!/usr/bin/env python3
"""Writes the synthetic safetensors checkpoints the independence tests compare.

A llama-like language model (model.embed_tokens, per layer self_attn q/k/v/o and mlp
gate/up/down, norms, lm_head) plus a small ViT-like "vision_tower" component, in several
variants. Only numpy (Debian's python3-numpy) and the standard library; safetensors is written by
hand: an 8-byte little-endian header length, the JSON header, then the raw little-endian data.

Usage: make_checkpoints.py OUT_DIR [--pairs N]
"""
import argparse
import json
import os
import struct

import numpy as np

HIDDEN, INTER, LAYERS, VOCAB = 32, 64, 2, 96
V_HIDDEN, V_INTER, V_LAYERS, V_PATCH = 24, 48, 2, 27
SCALE = 0.02
FINETUNE_NOISE = 0.3  # of SCALE: cosine similarity to the base about 0.96


def base_model(seed, vocab=VOCAB):
    rng = np.random.default_rng(seed)
    g = lambda *shape: (rng.standard_normal(shape) * SCALE).astype(np.float32)
    t = {"model.embed_tokens.weight": g(vocab, HIDDEN), "model.norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            t[p + f"self_attn.{name}.weight"] = g(HIDDEN, HIDDEN)
        t[p + "mlp.gate_proj.weight"] = g(INTER, HIDDEN)
        t[p + "mlp.up_proj.weight"] = g(INTER, HIDDEN)
        t[p + "mlp.down_proj.weight"] = g(HIDDEN, INTER)
        t[p + "input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
    t["lm_head.weight"] = g(vocab, HIDDEN)
    t["vision_tower.patch_embed.weight"] = g(V_HIDDEN, V_PATCH)
    for i in range(V_LAYERS):
        p = f"vision_tower.layers.{i}."
        t[p + "attn.qkv.weight"] = g(3 * V_HIDDEN, V_HIDDEN)
        t[p + "attn.proj_out.weight"] = g(V_HIDDEN, V_HIDDEN)
        t[p + "mlp.fc1.weight"] = g(V_INTER, V_HIDDEN)
        t[p + "mlp.fc2.weight"] = g(V_HIDDEN, V_INTER)
    return t


def finetune(model, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in model.items():
        noise = rng.standard_normal(w.shape).astype(np.float32) * SCALE * FINETUNE_NOISE
        out[name] = (w + noise).astype(np.float32) if w.ndim == 2 else w.copy()
    return out


def permute_mlp(model, seed):
    """The provenance-hiding edit: each layer's MLP hidden units permuted consistently (rows of
    gate and up, columns of down). The network computes exactly the same function."""
    rng = np.random.default_rng(seed)
    out = dict(model)
    for i in range(LAYERS):
        p = f"model.layers.{i}.mlp."
        perm = rng.permutation(INTER)
        out[p + "gate_proj.weight"] = model[p + "gate_proj.weight"][perm, :]
        out[p + "up_proj.weight"] = model[p + "up_proj.weight"][perm, :]
        out[p + "down_proj.weight"] = model[p + "down_proj.weight"][:, perm]
    return out


def to_bf16_bits(w):
    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
    return rounded.astype(np.uint16)


def encode(w, dtype):
    if dtype == "F32":
        return np.ascontiguousarray(w, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(w, dtype="<f2").tobytes()
    if dtype == "BF16":
        return to_bf16_bits(w).astype("<u2").tobytes()
    raise ValueError(dtype)


def write_safetensors(path, tensors, dtype="F32"):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        data = encode(tensors[name], dtype)
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format allows padding the header with spaces
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def write_sharded(directory, tensors, shards=2, dtype="F32"):
    os.makedirs(directory, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        write_safetensors(os.path.join(directory, shard), part, dtype)
        weight_map.update({n: shard for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = lambda name: os.path.join(args.out, name)

    base = base_model(0)
    tuned = finetune(base, 1)
    write_safetensors(path("base.safetensors"), base)
    write_safetensors(path("finetune.safetensors"), tuned)
    write_safetensors(path("finetune_permuted.safetensors"), permute_mlp(tuned, 2))
    write_safetensors(path("finetune_f16.safetensors"), tuned, "F16")
    write_safetensors(path("finetune_bf16.safetensors"), tuned, "BF16")
    write_sharded(path("base_sharded"), base)
    write_sharded(path("finetune_sharded_bf16"), tuned, shards=3, dtype="BF16")
    write_safetensors(path("independent.safetensors"), base_model(1000))

    # Everything independent except the vision tower, copied from the base.
    mixed = base_model(1001)
    mixed.update({n: w for n, w in base.items() if n.startswith("vision_tower.")})
    write_safetensors(path("vision_copied.safetensors"), mixed)

    # A fine-tune whose vocabulary grew: embed_tokens and lm_head differ in shape.
    resized = finetune(base, 3)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = np.random.default_rng(4).standard_normal((8, HIDDEN)).astype(np.float32) * SCALE
        resized[name] = np.concatenate([resized[name], extra])
    write_safetensors(path("resized_vocab.safetensors"), resized)

    # A GPT-2-style naming: no tensor name in common with the llama layout.
    rng = np.random.default_rng(5)
    write_safetensors(path("other_layout.safetensors"),
                      {"transformer.h.0.attn.c_attn.weight": rng.standard_normal((HIDDEN, 3 * HIDDEN)).astype(np.float32),
                       "transformer.wte.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)})

    # Disjoint pairs of independently initialised models, for the false-positive rate.
    os.makedirs(path("pairs"), exist_ok=True)
    for k in range(args.pairs):
        write_safetensors(path(f"pairs/{k}_a.safetensors"), base_model(2000 + 2 * k))
        write_safetensors(path(f"pairs/{k}_b.safetensors"), base_model(2001 + 2 * k))


if __name__ == "__main__":
    main()

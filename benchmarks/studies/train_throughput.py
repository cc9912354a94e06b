"""Training-step throughput of our llava model against plain Hugging Face LLaVA, in one process.

Same shapes as ../shared/bench/hf_llava_baseline.py (CLIP ViT-L/14-336 + a Qwen2-0.5B-shaped LLM,
16 x (576 image + 512 text) tokens, every parameter trained with fused AdamW, bf16 autocast, SDPA),
same FLOPs formula (imported from that script), so the ratio is what a user gains by switching.

    python benchmarks/studies/train_throughput.py --baseline ../shared/bench/hf_llava_baseline.py            # GPU
    python benchmarks/studies/train_throughput.py --baseline ../shared/bench/hf_llava_baseline.py --config tiny  # CPU smoke

What our step does differently: the LM head runs only on label positions (no [B, L, V] logits for
the image tokens), the cross-entropy is computed in chunks so the fp32 logits never exist at once,
and with --compile the LLM's decoder layers are compiled one by one (not the whole model).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch

from vlm.train.objectives import build_objective


def load_baseline(path: str):
    spec = importlib.util.spec_from_file_location("hf_llava_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_ours(cfg: dict):
    """Our llava model with the baseline's shapes; every parameter trainable (as the baseline trains)."""
    from vlm import build
    v, l = cfg["vision"], cfg["llm"]
    # The HF CLIP preset with the baseline's vision config (LlavaConfig's vision_feature_layer=-1, CLS dropped).
    vision = {"name": "clip-vit-l-336", **v, "feature_layer": -1, "feature_select": "default"}
    llm = {"model_type": "qwen2", **l, "max_position_embeddings": 4096}
    model = build("llava", vision=vision, llm=llm, llm_mode="full")
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def run(base, name: str, device: str, steps: int, warmup: int, compile_model: bool, batch: int | None):
    cfg = base.CONFIGS[name]
    torch.manual_seed(0)
    model = build_ours(cfg).to(device).train()
    if compile_model:
        for layer in model.parts.layers:
            layer.compile()
        for tok in model.media.values():
            tok.encoder.compile()
    loss_fn = build_objective("next_token", {})
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=device == "cuda")
    v = cfg["vision"]
    n_img = (v["image_size"] // v["patch_size"]) ** 2
    B, T = batch or cfg["batch"], cfg["text_len"]
    pid = model.placeholder_id["image"]
    vocab = len(model.tokenizer)
    ids = torch.randint(100, vocab, (B, n_img + T), device=device)   # ids < 100: special tokens, placeholders
    ids[:, :n_img] = pid
    ids[:, :n_img] = pid
    labels = ids.clone()
    labels[:, :n_img] = -100
    pixels = list(torch.randn(B, 3, v["image_size"], v["image_size"], device=device).unbind(0))
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with amp:
            out = loss_fn(model, {"input_ids": ids, "labels": labels, "media": {"image": pixels}})
            loss = out.loss / out.count
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    flops = base.model_flops_per_step(cfg, B, n_img, T)
    out = dict(impl="vlm-llava" + ("+compile" if compile_model else ""), config=name, device=device, batch=B,
               seq=n_img + T, params=sum(p.numel() for p in model.parameters()), step_s=round(dt, 4),
               tokens_per_s=round(B * (n_img + T) / dt, 1), tflops=round(flops / dt / 1e12, 2), loss=round(loss.item(), 4))
    if device == "cuda":
        out["mfu"] = round(flops / dt / base.PEAK_BF16["cuda"], 4)
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(out), flush=True)
    model = opt = None                                # frees the GPU before the baseline runs
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="path to hf_llava_baseline.py")
    p.add_argument("--config", default=None, help="tiny | qwen0.5b-vitl336 (default: the GPU config on a GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--skip-baseline", action="store_true")
    a = p.parse_args(argv)
    base = load_baseline(a.baseline)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = a.config or ("qwen0.5b-vitl336" if dev == "cuda" else "tiny")
    ours = run(base, name, dev, a.steps, a.warmup, a.compile, a.batch)
    if not a.skip_baseline:
        import io
        from contextlib import redirect_stdout
        buf = io.StringIO()
        with redirect_stdout(buf):
            base.run(name, dev, a.steps, a.warmup, a.compile, a.batch)
        theirs = json.loads(buf.getvalue().strip().splitlines()[-1])
        print(json.dumps(theirs), flush=True)
        print(json.dumps({"speedup_tokens_per_s": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3),
                          "memory_ratio": round(ours.get("peak_mem_gib", 0) / max(theirs.get("peak_mem_gib", 1e-9), 1e-9), 3)
                          if dev == "cuda" else None}), flush=True)


if __name__ == "__main__":
    main()

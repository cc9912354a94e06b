"""CUDA checks of the core model that the CPU tests cannot make: bf16 autocast training step,
KV-cache generation equivalence and save/load on the GPU.

    python benchmarks/studies/cuda_smoke.py
"""
import json
import tempfile

import torch
from PIL import Image

import vlm
from vlm.data.collate import collate
from vlm.train.objectives import build_objective


def main(dev: str = "cuda"):
    model = vlm.build("llava", vision="tiny-clip", llm="tiny:qwen2", audio="whisper:tiny", llm_mode="full").to(dev)
    loss_fn = build_objective("next_token", {})
    img = Image.new("RGB", (64, 64), "red")
    s = model.processor({"conversations": [{"from": "human", "value": "<image>\n<audio>\nWhat is it?"},
                                           {"from": "gpt", "value": "a red square and a tone"}]},
                        media={"image": [img], "audio": [(torch.randn(16000), 16000)]})
    b = collate([s, s], model.tokenizer.pad_token_id)
    b = {k: (v.to(dev) if torch.is_tensor(v) else {m: [x.to(dev) for x in xs] for m, xs in v.items()})
         for k, v in b.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(20):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            out = loss_fn(model, b)
            loss = out.loss / out.count
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    p = model.processor.prompt("<image>\nWhat colour?", {"image": [img]})
    ids = torch.tensor([p.input_ids], device=dev)
    media = {"image": [x.to(dev) for x in p.media["image"]]}
    g1 = model.generate(ids, media=media, max_new_tokens=16, eos_token_id=-1, use_cache=True)
    g2 = model.generate(ids, media=media, max_new_tokens=16, eos_token_id=-1, use_cache=False)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        re = vlm.load(d, device=dev)
        with torch.no_grad():
            args = b["input_ids"], b["attention_mask"]
            same = torch.equal(model.logits(*args, media=b["media"]), re.logits(*args, media=b["media"]))
    out = dict(check="cuda_smoke", gpu=torch.cuda.get_device_name() if dev == "cuda" else "cpu", loss_first=round(losses[0], 4),
               loss_last=round(losses[-1], 4), kv_cache_same_tokens=g1 == g2, save_load_identical=same)
    print(json.dumps(out), flush=True)
    assert losses[-1] < 0.5 * losses[0] and g1 == g2 and same, out


if __name__ == "__main__":
    import sys
    main(sys.argv[1] if len(sys.argv) > 1 else "cuda")

"""The IAA study (benchmarks/studies/iaa_compare.py) at a tiny budget: every run starts from the same
text-pretrained LLM (`llm: vlm:<checkpoint>`), IAA's and the frozen LLaVA's text path stay the base LLM bit
for bit (logit gap 0, the same text-QA scores and perplexity) while the LoRA and full LLaVA change it, and
the LoRA baseline trains as many parameters as IAA (within 0.2 %)."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_train_common import load_study


def test_iaa_study_table(tmp_path, capsys, one_intra_op_thread):
    import vlm
    from vlm.data.synthetic import build_synthetic_world
    s = load_study("iaa_compare")
    data, text = tmp_path / "data", tmp_path / "text"
    build_synthetic_world(data, samples=160, seed=0, eval_per_task=3, workers=1, classification=False,
                          tasks=["caption", "color", "shape", "count", "multi_turn", "spatial", "digit", "ocr",
                                 "fine_detail"])
    build_synthetic_world(text, samples=120, seed=0, eval_per_task=3, workers=1, classification=False,
                          tasks=["text"])
    steps = [f"stages.{i}.{k}={v}" for i in range(3) for k, v in (("steps", 2), ("batch_size", 4))]
    out = tmp_path / "out"
    assert s.main(["--data", str(data), "--text-data", str(text), "--out", str(out), "--base-override",
                   "stages.0.steps=30", *steps, "runtime.checkpoint_every=0", "runtime.num_workers=0"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    gap, ppl, params = summary["logit_gap"], summary["perplexity"], summary["trainable_params"]
    assert gap["iaa-tiny"] == 0.0 and gap["llava-tiny-frozen"] == 0.0
    assert gap["llava-tiny-lora"] > 0 and gap["llava-tiny-full"] > 0
    assert ppl["iaa-tiny"] == ppl["llava-tiny-frozen"] == ppl[s.BASE] != ppl["llava-tiny-full"]
    assert abs(params["llava-tiny-lora"] - params["iaa-tiny"]) <= 0.002 * params["iaa-tiny"]
    assert params["llava-tiny-frozen"] < params["iaa-tiny"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    text_rows = {(r["model"], r["benchmark"]): r["score"] for r in rows if r["benchmark"].startswith("sw-text-")}
    assert {b for _, b in text_rows} == {"sw-text-fact", "sw-text-arith", "sw-text-count", "sw-text-order"}
    for b in ("sw-text-fact", "sw-text-arith", "sw-text-count", "sw-text-order"):
        assert text_rows[("iaa-tiny", b)] == text_rows[(s.BASE, b)]
    assert {r["model"] for r in rows if r["benchmark"] == "sw-vqa-color"} == set(s.RUNS)
    assert "| model | trainable params (SFT) | sw-text-fact |" in printed and "| iaa-tiny | 238,400 |" in printed
    base = vlm.load(out / "base-llm" / "final")
    assert not base.encoders and vlm.load(out / "iaa-tiny" / "final").encoders

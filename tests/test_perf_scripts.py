"""The perf scripts run end to end on tiny shapes on the CPU (no timing asserted): zero-shot against
clip_benchmark on the digits set with a tiny CLIP (the two harnesses' outputs must agree), and the data
pipeline against the hand-written loader."""
import json

import pytest
from test_train_common import load_study

from benchmarks.fixtures import tiny_open_clip_config


def test_eval_throughput_runs_both_harnesses_on_digits_and_they_agree(tmp_path, capsys):
    pytest.importorskip("clip_benchmark")
    study = load_study("eval_throughput")
    cfg = tiny_open_clip_config(tmp_path / "tinyclip.json")
    study.main(["--dataset", "digits", "--arch", str(cfg), "--image-size", "32", "--templates", "2",
                "--batch-size", "256", "--json", str(tmp_path / "fig.json")])
    fig = json.loads((tmp_path / "fig.json").read_text())
    assert fig["images"] == 1797 and fig["classes"] == 10 and len(fig["times"]["ref"]) == 1
    assert fig["confusion_equal"] and fig["class_weights_max_abs_diff"] < 1e-5
    for side in ("ref", "cold", "warm"):
        assert set(fig["phases"][side][0]) == {"start-up", "text tower", "images"}
    assert fig["phases"]["warm"][0]["images"] < fig["phases"]["cold"][0]["images"]      # answered from the cache
    out = capsys.readouterr().out
    assert "clip_benchmark 1.6.2" in out and "target <= 0.1x" in out


def test_data_throughput_runs_ours_and_the_fair_baseline(tmp_path, capsys):
    study = load_study("data_throughput")
    fig = study.main(["--samples", "48", "--width", "160", "--height", "120", "--batch-size", "8", "--workers", "1",
                      "--data", str(tmp_path / "d")])
    assert fig["baseline"] > 0 and fig["ours"] > 0
    assert "target >= 1.3x" in capsys.readouterr().out


def test_open_clip_identity_is_read_without_importing_open_clip():
    """The warm path: naming an open_clip model (its cache fingerprint) reads the architecture's config from
    the installed package's files, the same config `open_clip.get_model_config` gives, without the import."""
    import subprocess
    import sys
    code = ("import sys; from vlm.embed.backends import OpenClipBackend; b = OpenClipBackend('open_clip:ViT-B-32'); "
            "print(b.fingerprint, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    import open_clip

    from vlm.embed.backends import OpenClipBackend, open_clip_config
    assert out[0] == OpenClipBackend("open_clip:ViT-B-32").fingerprint
    for arch in ("ViT-B-32", "RN50", "ViT-L-14-336"):
        assert open_clip_config(arch) == open_clip.get_model_config(arch)
    assert open_clip_config("no-such-arch") is None

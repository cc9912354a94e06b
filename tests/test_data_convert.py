"""Converters from what researchers hold: Hugging Face datasets (parquet and save_to_disk) in the three
common conversation layouts, streamed; annotation paths confined to their roots in every converter.

    python -m pytest tests/test_data_convert.py -q
"""
from __future__ import annotations

import glob
import io
import json
import os

import pytest
import webdataset as wds
from PIL import Image

from vlm.cli import main as vlm_main
from vlm.data import convert
from vlm.data.convert_hf import convert_hf_dataset
from vlm.errors import UserError


def jpg(color: str, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def read_out(folder) -> dict[str, dict]:
    files = sorted(glob.glob(os.path.join(str(folder), "*.tar")))
    return {s["__key__"]: s for s in wds.WebDataset(files, shardshuffle=False)}


def conv_of(sample: dict) -> list[dict]:
    return json.loads(sample["json"])["conversations"]


@pytest.fixture(scope="module")
def datasets_lib():
    return pytest.importorskip("datasets")


def test_llava_layout_parquet_with_image_bytes(tmp_path, datasets_lib, monkeypatch):
    from datasets import Dataset, Features, Image as HFImage, List, Value
    feats = Features({"id": Value("string"), "image": HFImage(),
                      "conversations": List({"from": Value("string"), "value": Value("string")})})
    rows = {"id": ["a1", "a2", "a3", "a4"],
            "image": [{"bytes": jpg("red"), "path": None}, {"bytes": png("blue"), "path": None},
                      {"bytes": b"\xff\xd8 not a jpeg at all", "path": None}, None],
            "conversations": [[{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
                              [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "a blue square"}],
                              [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "x"}],
                              [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]]}
    (tmp_path / "ds" / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet"))
    report = convert_hf_dataset(str(tmp_path / "ds"), str(tmp_path / "out"), max_bad=0.5)
    assert (report.written, report.skipped) == (3, 1) and report.reasons == {"bad_image": 1}
    assert "a3" in report.problems[0] and "bad_image: 1" in report.summary()
    assert " at 0x" not in report.problems[0]     # PIL's BytesIO address: index.json differed run to run
    out = read_out(tmp_path / "out")
    assert set(out) == {"a1", "a2", "a4"}
    # the parquet file named relative to the working folder (its folder was '': "image root folder not found")
    monkeypatch.chdir(tmp_path / "ds" / "data")
    again = convert_hf_dataset("train-00000-of-00001.parquet", str(tmp_path / "out-rel"), max_bad=0.5)
    assert (again.written, again.skipped) == (3, 1)
    assert out["a1"]["jpg"] == jpg("red") and out["a2"]["png"] == png("blue")       # kept byte for byte
    assert conv_of(out["a2"])[0]["value"] == "<image>\nDescribe."                   # placeholder added
    assert "jpg" not in out["a4"] and "png" not in out["a4"]                         # text only


def test_sharegpt_messages_save_to_disk_with_image_paths_confined(tmp_path, datasets_lib):
    from datasets import Dataset
    root = tmp_path / "ds"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "x.jpg").write_bytes(jpg("green"))
    (tmp_path / "outside.jpg").write_bytes(jpg("red"))
    parts = [{"type": "image", "text": None}, {"type": "text", "text": "\nWhat is it?"}]
    msgs = [[{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": parts}, {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]}]] * 4
    Dataset.from_dict({"messages": msgs, "images": [["imgs/x.jpg"], ["../outside.jpg"],
                                                    [str(tmp_path / "outside.jpg")], ["imgs/x.jpg"]]}).save_to_disk(str(root / "saved"))
    report = convert_hf_dataset(str(root / "saved"), str(tmp_path / "out"), image_root=str(root), max_bad=0.6)
    assert (report.written, report.skipped) == (2, 2) and report.reasons == {"path_outside_root": 2}
    out = read_out(tmp_path / "out")
    assert set(out) == {"0", "3"} and out["0"]["jpg"] == jpg("green")
    assert conv_of(out["0"]) == [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nWhat is it?"},
                                 {"from": "gpt", "value": "a circle"}]


def test_cauldron_texts_dataset_dict_via_cli(tmp_path, datasets_lib, capsys):
    from datasets import Dataset, DatasetDict, Features, Image as HFImage, List, Value
    feats = Features({"images": List(HFImage()),
                      "texts": List({"user": Value("string"), "assistant": Value("string"), "source": Value("string")})})
    rows = {"images": [[jpg("red"), jpg("blue", (16, 40))], [jpg("green")], [b"corrupt bytes"]],
            "texts": [[{"user": "Same colour?", "assistant": "No.", "source": "vqa"},
                       {"user": "Which is taller?", "assistant": "The second.", "source": "vqa"}],
                      [{"user": "Colour?", "assistant": "Green.", "source": "vqa"}],
                      [{"user": "Q?", "assistant": "A.", "source": "vqa"}]]}
    dd = DatasetDict({"train": Dataset.from_dict(rows, features=feats), "test": Dataset.from_dict(rows, features=feats)})
    dd.save_to_disk(str(tmp_path / "cauldron"))
    assert vlm_main(["data", "convert", "hf-dataset", str(tmp_path / "cauldron"), "--out", str(tmp_path / "out"),
                     "--split", "train", "--max-bad", "0.5"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    out = read_out(tmp_path / "out")
    assert {"0.jpg", "1.jpg"} <= set(out["0"]) and conv_of(out["0"]) == [
        {"from": "human", "value": "<image>\n<image>\nSame colour?"}, {"from": "gpt", "value": "No."},
        {"from": "human", "value": "Which is taller?"}, {"from": "gpt", "value": "The second."}]
    # one-line errors: a split that is not there, a column that is not there
    assert vlm_main(["data", "convert", "hf-dataset", str(tmp_path / "cauldron"), "--out", str(tmp_path / "o2"),
                     "--split", "validation"]) == 2
    assert "no split 'validation'" in capsys.readouterr().err
    assert vlm_main(["data", "convert", "hf-dataset", str(tmp_path / "cauldron"), "--split", "train",
                     "--conversations-column", "chat", "--out", str(tmp_path / "o3")]) == 2
    assert "no column 'chat'" in capsys.readouterr().err


def test_every_converter_refuses_paths_outside_its_root(tmp_path):
    """`..`, an absolute path elsewhere and a symlink out are refused and counted (path_outside_root)."""
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "img" / "a.jpg")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "img" / "link.jpg")
    qa = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    records = [{"id": n, "image": p, "conversations": qa} for n, p in
               [("ok", "img/a.jpg"), ("up", "../secret.jpg"), ("abs", str(tmp_path / "secret.jpg")),
                ("link", "img/link.jpg"), ("ok2", str(root / "img" / "a.jpg"))]]
    (tmp_path / "d.json").write_text(json.dumps(records))
    report = convert.convert_llava_json(str(tmp_path / "d.json"), str(root), str(tmp_path / "o1"), max_bad=0.9)
    assert report.written == 2 and report.reasons == {"path_outside_root": 3}
    assert set(read_out(tmp_path / "o1")) == {"ok", "ok2"}

    # media-folder: the captions table names the files
    import numpy as np
    import soundfile as sf
    (root / "clips").mkdir()
    sf.write(root / "clips" / "a.flac", np.zeros(1600, np.float32), 16000)
    sf.write(tmp_path / "b.flac", np.zeros(1600, np.float32), 16000)
    (tmp_path / "caps.json").write_text(json.dumps({"a.flac": "silence", "../../b.flac": "escape",
                                                   str(tmp_path / "b.flac"): "absolute"}))
    report = convert.convert_media_folder(str(root / "clips"), str(tmp_path / "caps.json"), str(tmp_path / "o2"),
                                          max_bad=0.9)
    assert report.written == 1 and report.reasons == {"path_outside_root": 2}

    # folder converters: a symlink inside pointing out is refused too
    (root / "img" / "a.txt").write_text("a red square")
    (root / "img" / "link.txt").write_text("secret")
    report = convert.convert_caption_folder(str(root / "img"), str(tmp_path / "o3"), max_bad=0.9)
    assert report.written == 1 and report.reasons == {"path_outside_root": 1}
    (root / "cls" / "red").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "cls" / "red" / "a.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "cls" / "red" / "b.jpg")
    report = convert.convert_class_folder(str(root / "cls"), str(tmp_path / "o4"), max_bad=0.9)
    assert report.written == 1 and report.reasons == {"path_outside_root": 1}
    # and a whole file of escaping paths stops with one line naming it
    (tmp_path / "bad.json").write_text(json.dumps(records[1:3]))
    with pytest.raises(UserError, match="outside"):
        convert.convert_llava_json(str(tmp_path / "bad.json"), str(root), str(tmp_path / "o5" / "train"))
    assert not (tmp_path / "o5").exists()          # the folders it made are gone again (it left an empty --out)
    (tmp_path / "o6").mkdir()
    with pytest.raises(UserError, match="outside"):
        convert.convert_llava_json(str(tmp_path / "bad.json"), str(root), str(tmp_path / "o6" / "train"))
    assert os.listdir(tmp_path / "o6") == []       # the user's folder stays
    os.symlink(tmp_path / "secret.jpg", root / "cls" / "red" / "c.jpg")
    os.remove(root / "cls" / "red" / "a.jpg")
    with pytest.raises(UserError, match="outside"):
        convert.convert_class_folder(str(root / "cls"), str(tmp_path / "o7"))
    assert not (tmp_path / "o7").exists()


def test_unreadable_or_odd_parquet_and_jsonl_are_one_line(tmp_path, datasets_lib):
    """A corrupt parquet, one whose columns differ from its folder's first (datasets stopped mid-stream with
    "Couldn't cast"), a broken MMEB jsonl line and an MMEB text that is a number: one line or a counted skip."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlm.data.mmeb import convert_mmeb_train
    conv = [[{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]]
    for name, extra in (("a", {}), ("b", {"quality": [0.5]})):
        (tmp_path / "cols").mkdir(exist_ok=True)
        pq.write_table(pa.table({"id": [name], "conversations": conv, **extra}), tmp_path / "cols" / f"{name}.parquet")
    with pytest.raises(UserError, match=r"b\.parquet: columns .* differ from .*a\.parquet's"):
        convert_hf_dataset(str(tmp_path / "cols"), str(tmp_path / "o1"))
    (tmp_path / "cols" / "b.parquet").write_bytes((tmp_path / "cols" / "a.parquet").read_bytes()[:60])
    with pytest.raises(UserError, match=r"b\.parquet: not a readable parquet file"):
        convert_hf_dataset(str(tmp_path / "cols"), str(tmp_path / "o1"))
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "conversations": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")                                   # 0 rows: ArrowInvalid traceback
    with pytest.raises(UserError, match=r"empty\.parquet: a parquet file with no rows"):
        convert_hf_dataset(str(tmp_path / "empty.parquet"), str(tmp_path / "o1"))
    # an Image column under another name was left unread: every row trained text-only, exit 0 (a review)
    from datasets import Dataset, Features, List, Value
    from datasets import Image as HFImage
    turns = List({"from": Value("string"), "value": Value("string")})
    Dataset.from_dict({"picture": [{"bytes": jpg("red"), "path": None}], "conversations": conv},
                      features=Features({"picture": HFImage(), "conversations": turns})).to_parquet(
        str(tmp_path / "pic.parquet"))
    with pytest.raises(UserError, match=r"pic\.parquet: column 'picture' holds images .* --image-column picture"):
        convert_hf_dataset(str(tmp_path / "pic.parquet"), str(tmp_path / "o1"))
    assert convert_hf_dataset(str(tmp_path / "pic.parquet"), str(tmp_path / "o9"), image_column="picture").written == 1
    from vlm.data.mmtrail import read_records
    (tmp_path / "ann.json").write_bytes('[{"video": "café.mp4"}]'.encode("latin-1"))
    with pytest.raises(UserError, match=r"ann\.json: not UTF-8 text"):
        list(read_records(str(tmp_path / "ann.json")))
    sub = tmp_path / "mmeb" / "VOC2007"
    sub.mkdir(parents=True)
    row = {"qry": "Find the dog", "qry_image_path": "", "pos_text": "a dog", "pos_image_path": "",
           "neg_text": "", "neg_image_path": ""}
    (sub / "original.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "qry": 5}) + "\n")
    report = convert_mmeb_train(str(tmp_path / "mmeb"), str(tmp_path / "o2"), max_bad=0.9)
    assert report.written == 1 and report.reasons == {"bad_row": 1}, report.reasons
    (sub / "original.jsonl").write_text(json.dumps(row) + "\n{broken\n")
    with pytest.raises(UserError, match=r"original\.jsonl: line 2: not a JSON object row"):
        convert_mmeb_train(str(tmp_path / "mmeb"), str(tmp_path / "o3"))
    (sub / "original.jsonl").write_bytes('{"qry": "café"}\n'.encode("latin-1"))         # before any line is read
    with pytest.raises(UserError, match=r"original\.jsonl: not UTF-8 text \(after line 0\)"):
        convert_mmeb_train(str(tmp_path / "mmeb"), str(tmp_path / "o3"))


def test_deep_and_rotated_images_convert_as_they_look(tmp_path):
    """The converters re-encoded through convert("RGB"): a 16-bit TIFF came out almost all white, a float
    TIFF all black; no decoder applied an EXIF orientation (phone photos trained sideways)."""
    import numpy as np

    from vlm.modalities import decode_image
    ramp = np.tile(np.arange(256, dtype=np.uint16) * 257, (8, 1))          # 0..65535 in 256 steps
    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "deep.tif")
    Image.fromarray((ramp / 65535.0).astype(np.float32)).save(folder / "float.tif")
    rotated = Image.new("RGB", (64, 32), "red")
    exif = Image.Exif()
    exif[0x0112] = 6                                                         # rotate 90 degrees to display
    rotated.save(folder / "phone.jpg", exif=exif)
    for name in ("deep", "float", "phone"):
        (folder / f"{name}.txt").write_text(f"{name} image")
    report = convert.convert_caption_folder(str(folder), str(tmp_path / "out"))
    assert report.written == 3
    images = {}
    for sample in wds.WebDataset(sorted(glob.glob(str(tmp_path / "out" / "*.tar"))), shardshuffle=False):
        ext = next(k for k in ("png", "jpg") if k in sample)
        answer = json.loads(sample["json"])["conversations"][1]["value"]
        images[answer.split()[0]] = decode_image(sample[ext])
    for name in ("deep", "float"):
        row = np.asarray(images[name].convert("L"))[0].astype(float)
        assert abs(row.mean() - 127.5) < 2 and len(set(row.tolist())) > 200, name
    assert images["phone"].size == (32, 64)             # the JPEG is kept with its EXIF; decoding turns it
    # a float image with NaN / inf pixels: the finite pixels' range (one NaN pixel made the whole image black,
    # a review); NaN and -inf read as its low end, +inf as its high end; no finite pixel at all is a MediaError
    from vlm.modalities import MediaError, to_rgb
    spoilt = (ramp / 65535.0).astype(np.float32)
    spoilt[:, 100], spoilt[:, 101], spoilt[:, 102] = np.nan, np.inf, -np.inf
    row = np.asarray(to_rgb(Image.fromarray(spoilt)).convert("L"))[0]
    clean = np.asarray(images["float"].convert("L"))[0]
    assert (row[100:103] == [0, 255, 0]).all() and (np.delete(row, [100, 101, 102]) == np.delete(clean, [100, 101, 102])).all()
    with pytest.raises(MediaError, match="no finite pixel value"):
        to_rgb(Image.fromarray(np.full((4, 4), np.nan, np.float32)))


def test_keys_of_repeated_ids_are_the_first_free_suffix():
    """make_key kept the first free `name_N` by trying N = 1, 2, ... for every repeat: 8,000 records of one
    id took 11 s and 100k hours. The suffix to try next is kept per name; the keys given are the same: a
    literal `a_1` record still pushes the next repeat of `a` to `a_2`."""
    seen = convert.Keys()
    names = ["a", "a_1", "a", "a", "a.b", "a/b", "", "."]
    assert [convert.make_key(n, seen) for n in names] == ["a", "a_1", "a_2", "a_3", "a_b", "a_b_1", "sample", "sample_1"]
    assert [convert.make_key("same", seen) for _ in range(20000)][-1] == "same_19999"


def test_a_conversation_whose_every_answer_is_empty_is_no_answer():
    """hf-dataset wrote samples whose assistant turns were all "" (the_cauldron, ShareGPT); llava-json skipped them
    as no_answer (found by a review)."""
    from vlm.data.convert import Skip
    from vlm.data.convert_hf import conversation_of
    with pytest.raises(Skip) as e:
        conversation_of([{"user": "What colour?", "assistant": "  "}])
    assert e.value.reason == "no_answer" and "every assistant turn is empty" in str(e.value)
    with pytest.raises(Skip):
        conversation_of([{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}])
    assert conversation_of([{"user": "What colour?", "assistant": "red"}])[-1] == {"from": "gpt", "value": "red"}


def test_a_video_whose_frames_do_not_decode_is_skipped_when_converted(tmp_path):
    """Container and stream headers read, the frame data garbage: written as good (found by a review)."""
    import json

    import numpy as np

    from vlm.data.convert import convert_media_folder
    from vlm.data.writer import encode_mp4
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "v").mkdir()
    for i in range(3):
        (tmp_path / "v" / f"ok{i}.mp4").write_bytes(encode_mp4(frames, fps=4))
    data = bytearray(encode_mp4(frames, fps=4))
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(rng.integers(0, 256, size - 8, dtype=np.uint8))
    (tmp_path / "v" / "garbage.mp4").write_bytes(bytes(data))
    (tmp_path / "caps.json").write_text(json.dumps({**{f"ok{i}.mp4": f"clip {i}" for i in range(3)},
                                                    "garbage.mp4": "garbage frames"}))
    report = convert_media_folder(str(tmp_path / "v"), str(tmp_path / "caps.json"), str(tmp_path / "out"),
                                  kind="video", max_bad=0.5)
    assert report.written == 3 and report.reasons == {"bad_video": 1}, report

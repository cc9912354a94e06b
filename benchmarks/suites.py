"""The built-in benchmarks and suites.

- `synthetic-world`: over the data set `vlm data build synthetic-world` writes (its `test` split and
  `wds/` class sets; probes fit on `train`), resolved against `--data` / $VLM_SYNTHETIC_WORLD.
- `unibench`: UniBench's benchmark types over shard folders a user supplies in the clip_benchmark
  `wds` layout, resolved against `--bench-root` / $VLM_BENCH_ROOT (e.g. `<root>/wds_cifar10`).
"""
from __future__ import annotations

from benchmarks.registry import Benchmark, DataRef, Suite, register_benchmark, register_suite
from vlm.modalities import MODALITIES

SW = "synthetic-world"


def _sw(path: str = "", tasks: tuple[str, ...] = (), split: str = "test", train_split: str | None = None) -> DataRef:
    return DataRef(SW, path, split, tasks, train_split)


# ------------------------------------------------------------------------------ synthetic-world
# (name, task, type, capability, modality)
_VQA = [
    ("color", "color", "object recognition", "attributes", "image"),
    ("shape", "shape", "object recognition", "object recognition", "image"),
    ("count", "count", "reasoning", "counting", "image"),
    ("spatial", "spatial", "relation", "spatial", "image"),
    ("digit", "digit", "non-natural", "character recognition", "image"),
    ("ocr", "ocr", "non-natural", "ocr", "image"),
    ("fine-detail", "fine_detail", "reasoning", "fine detail", "image"),
    ("multi-image", "multi_image", "reasoning", "multi-image", "image"),
    ("video", "video", "reasoning", "motion", "video"),
    ("trailer-shape", "trailer_shape", "object recognition", "what is seen", "video"),
    ("trailer-instrument", "trailer_instrument", "music", "what is heard", "video"),
    ("audio-tone", "audio_tone", "audio", "audio events", "audio"),
    ("audio-noise", "audio_noise", "audio", "audio events", "audio"),
    ("music-pitch", "music_pitch", "music", "pitch", "music"),
    ("music-chord", "music_chord", "music", "harmony", "music"),
    ("music-instrument", "music_instrument", "music", "timbre", "music"),
    ("music-tempo", "music_tempo", "music", "rhythm", "music"),
]
IMAGE_VQA_TASKS = ("color", "shape", "count", "spatial", "digit", "ocr", "fine_detail")
_SCENE_TASKS = ("color", "shape", "count", "spatial")

_benches: list[Benchmark] = [
    Benchmark("sw-shapes", "zeroshot", "object recognition", "object recognition", "top1", _sw("wds/shapes"),
              description="zero-shot classification of shapes (wds layout, 4 classes)"),
    Benchmark("sw-colors", "zeroshot", "object recognition", "attributes", "top1", _sw("wds/colors"),
              description="zero-shot classification of colours (wds layout, 6 classes)"),
    Benchmark("sw-relation-spatial", "relation", "relation", "spatial", "accuracy", _sw(tasks=("spatial",)),
              options={"mode": "spatial"}, description="caption order: true spatial relation vs reversed / swapped"),
    Benchmark("sw-relation-attribute", "relation", "relation", "attributes", "accuracy", _sw(tasks=("color", "shape")),
              options={"mode": "attribute"}, description="caption order: colours bound to the right shapes vs swapped"),
    Benchmark("sw-retrieval", "retrieval", "relation", "image-text retrieval", "mean_recall", _sw(tasks=_SCENE_TASKS),
              description="image-text retrieval over scene descriptions, Recall@1/5/10 both ways"),
    Benchmark("sw-mmeb", "mmeb", "embedding", "universal embedding", "precision@1", _sw(),
              description="MMEB-style: classification, VQA, retrieval, grounding; Precision@1, IND/OOD",
              options={"datasets": [
                  {"name": "cls-shape", "meta_task": "classification", "ood": False, "tasks": ["shape"]},
                  {"name": "cls-color", "meta_task": "classification", "ood": False, "tasks": ["color"]},
                  {"name": "cls-digit", "meta_task": "classification", "ood": True, "tasks": ["digit"]},
                  {"name": "vqa-count", "meta_task": "vqa", "ood": False, "tasks": ["count"]},
                  {"name": "vqa-spatial", "meta_task": "vqa", "ood": False, "tasks": ["spatial"]},
                  {"name": "vqa-ocr", "meta_task": "vqa", "ood": True, "tasks": ["ocr"]},
                  {"name": "ret-scenes", "meta_task": "retrieval", "ood": False, "tasks": list(_SCENE_TASKS),
                   "candidates": 100},
                  {"name": "ground-objects", "meta_task": "grounding", "ood": True, "tasks": ["color", "shape", "spatial"]},
              ]}),
    Benchmark("sw-caption", "caption", "generative", "captioning", "cider", _sw(tasks=_SCENE_TASKS),
              description="captioning against the scene's canonical description (BLEU, CIDEr)"),
    Benchmark("sw-vqa", "vqa", "generative", "vqa", "accuracy", _sw(tasks=IMAGE_VQA_TASKS),
              description="all single-image VQA tasks (the split the lmms-eval task `synthetic_world_vqa` reads)"),
    Benchmark("sw-vqa-mc", "vqa", "generative", "vqa", "accuracy", _sw(tasks=IMAGE_VQA_TASKS),
              options={"mode": "loglik"},
              description="single-image VQA by log-likelihood over the choices (lmms-eval `synthetic_world_vqa_mc`)"),
]
for short, task, typ, cap, mod in _VQA:
    _benches.append(Benchmark(f"sw-vqa-{short}", "vqa", typ, cap, "accuracy", _sw(tasks=(task,)), modality=mod,
                              description=f"generative VQA on '{task}' (normalised exact match)"))
    if MODALITIES[mod].files == "audio":
        _benches.append(Benchmark(f"sw-probe-{short}", "probe", typ, cap, "accuracy",
                                  _sw(tasks=(task,), train_split="train"), modality=mod,
                                  description=f"MARBLE probe of the frozen {mod} encoder on '{task}'"))

# Tempo finer than slow / fast (60-80 vs 140-180 bpm, which any encoder tells apart): the click track's bpm
# in three ranges per band, each about 10 % of its tempo wide.
BPM_BINS = ((60, 66), (67, 73), (74, 80), (140, 153), (154, 167), (168, 180))
_benches.append(Benchmark("sw-probe-music-bpm", "probe", "music", "rhythm (bpm)", "accuracy",
                          _sw(tasks=("music_tempo",), train_split="train"), modality="music",
                          options={"label": "labels.bpm", "bins": [list(b) for b in BPM_BINS]},
                          description="MARBLE probe of the frozen music encoder: the click track's beats per minute "
                                      "in six ranges ('music_tempo' clips)"))

# Captioning what is heard and seen: the caption samples of the test split, each asked with its own prompt.
for short, task, cap, mod in [("audio", "audio_caption", "sound captioning", "audio"),
                              ("music", "music_caption", "music captioning", "music"),
                              ("video", "trailer_visual", "video captioning", "video"),
                              ("trailer", "trailer_merged", "audio-visual captioning", "video")]:
    _benches.append(Benchmark(f"sw-caption-{short}", "caption", "generative", cap, "cider", _sw(tasks=(task,)),
                              modality=mod, options={"prompt": "sample"},
                              description=f"captioning '{task}' clips with their own prompt (BLEU, ROUGE-L, CIDEr)"))

for _b in _benches:
    register_benchmark(_b)

_ALL_SW = tuple(b.name for b in _benches if b.name not in ("sw-vqa", "sw-vqa-mc"))
register_suite(Suite(SW, "every synthetic-world benchmark: zero-shot, relation, retrieval, MMEB, VQA, captions, probes",
                     _ALL_SW))
register_suite(Suite("synthetic-world-quick", "the image capabilities only, by generation (the demo's table)",
                     tuple(f"sw-vqa-{t}" for t in ("color", "shape", "count", "spatial", "digit", "ocr"))))
register_suite(Suite("synthetic-world-audio", "what is heard: sound questions and captions, by generation",
                     ("sw-vqa-audio-tone", "sw-vqa-audio-noise", "sw-caption-audio")))
register_suite(Suite("synthetic-world-music", "music questions (pitch, chord, instrument, tempo) and captions",
                     ("sw-vqa-music-pitch", "sw-vqa-music-chord", "sw-vqa-music-instrument", "sw-vqa-music-tempo",
                      "sw-caption-music")))
register_suite(Suite("synthetic-world-video", "what moves and which shape in video clips, and their captions",
                     ("sw-vqa-video", "sw-vqa-trailer-shape", "sw-caption-video")))
register_suite(Suite("synthetic-world-trailer", "trailer clips: what is seen and heard, and merged captions",
                     ("sw-vqa-trailer-shape", "sw-vqa-trailer-instrument", "sw-caption-trailer")))
register_suite(Suite("synthetic-world-embedding", "the embedding harnesses: zero-shot, relation, retrieval, MMEB",
                     ("sw-shapes", "sw-colors", "sw-relation-spatial", "sw-relation-attribute", "sw-retrieval", "sw-mmeb")))
register_suite(Suite("music-probes", "MARBLE-style probes of the frozen music encoder: pitch, chord quality, "
                     "instrument, tempo (slow / fast, and bpm in six ranges; a mert or vlm checkpoint)",
                     tuple(f"sw-probe-music-{t}" for t in ("pitch", "chord", "instrument", "tempo", "bpm"))))

# ------------------------------------------------------------------------------ text-only questions
# What the base LLM knows before it sees media (`vlm data build synthetic-world --tasks text`; pass that
# folder as --data): the world's facts, arithmetic, counting and word order, by generation.
_TEXT = [("fact", "text_fact", "knowledge"), ("arith", "text_arith", "arithmetic"),
         ("count", "text_count", "counting"), ("order", "text_order", "word order")]
for short, task, cap in _TEXT:
    register_benchmark(Benchmark(f"sw-text-{short}", "vqa", "text", cap, "accuracy", _sw(tasks=(task,)),
                                 modality="text", description=f"text-only QA on '{task}' (normalised exact match; "
                                 f"data: vlm data build synthetic-world --tasks text)"))
register_suite(Suite("synthetic-world-text", "text-only questions: facts, arithmetic, counting, word order",
                     tuple(f"sw-text-{short}" for short, *_ in _TEXT)))

# A small object among distractors on a textured canvas, the question naming it by one attribute
# (`vlm data build synthetic-world --tasks fine_detail_hard ...`; pass that folder as --data).
register_benchmark(Benchmark("sw-vqa-fine-detail-hard", "vqa", "reasoning", "fine detail", "accuracy",
                             _sw(tasks=("fine_detail_hard",)),
                             description="generative VQA on 'fine_detail_hard': the small object named among "
                                         "distractors on a textured canvas (data: --tasks fine_detail_hard)"))

# ------------------------------------------------------------------------------ MMEB-style pairs (VLM2Vec)
# The synthetic-world pair tasks (`vlm data build synthetic-world --tasks mmeb`; pass that folder as --data):
# 12 datasets over the four meta-tasks, 8 in the training mixture and 4 out of distribution. Settings are
# chosen on `-val`, results reported on the test split.
MMEB_PAIR_TASKS = tuple(f"mmeb_{t}" for t in (
    "cls_shape", "cls_color", "cls_object", "vqa_color", "vqa_shape", "vqa_count", "vqa_paraphrase",
    "ret_t2i", "ret_i2t", "ret_i2i", "ground_name", "ground_position"))
for _name, _split in (("sw-mmeb-pairs", "test"), ("sw-mmeb-pairs-val", "val")):
    register_benchmark(Benchmark(
        _name, "mmeb", "embedding", "universal embedding", "precision@1", _sw(tasks=MMEB_PAIR_TASKS, split=_split),
        options={"datasets": [{"pairs": True, "candidates": 1000}]},
        description=f"MMEB-style pair tasks ({_split}): 4 meta-tasks, 12 datasets (4 OOD), P@1 against the label "
                    f"set or up to 1,000 candidates (data: vlm data build synthetic-world --tasks mmeb)"))
register_suite(Suite("synthetic-world-mmeb", "the MMEB-style pair tasks of synthetic-world, test split (VLM2Vec)",
                     ("sw-mmeb-pairs",)))

# ------------------------------------------------------------------------------ MMEB (user-supplied local copy)
# The 36 evaluation sets of MMEB (TIGER-Lab/MMEB-eval), over a local copy under --bench-root:
# <root>/MMEB-eval/<subset>/test-*.parquet and the images unzipped into <root>/MMEB-eval/eval_images/.
# Candidate lists come with the data: the label set for classification, 1,000 otherwise (gold first).
# (subset, meta-task, out of distribution): IND = the 20 sets VLM2Vec trains on (MMEB-train).
MMEB_EVAL = [
    ("ImageNet-1K", "classification", False), ("N24News", "classification", False),
    ("HatefulMemes", "classification", False), ("VOC2007", "classification", False), ("SUN397", "classification", False),
    ("Place365", "classification", True), ("ImageNet-A", "classification", True), ("ImageNet-R", "classification", True),
    ("ObjectNet", "classification", True), ("Country211", "classification", True),
    ("OK-VQA", "vqa", False), ("A-OKVQA", "vqa", False), ("DocVQA", "vqa", False), ("InfographicsVQA", "vqa", False),
    ("ChartQA", "vqa", False), ("Visual7W", "vqa", False), ("ScienceQA", "vqa", True), ("VizWiz", "vqa", True),
    ("GQA", "vqa", True), ("TextVQA", "vqa", True),
    ("VisDial", "retrieval", False), ("CIRR", "retrieval", False), ("VisualNews_t2i", "retrieval", False),
    ("VisualNews_i2t", "retrieval", False), ("MSCOCO_t2i", "retrieval", False), ("MSCOCO_i2t", "retrieval", False),
    ("NIGHTS", "retrieval", False), ("WebQA", "retrieval", False), ("FashionIQ", "retrieval", True),
    ("Wiki-SS-NQ", "retrieval", True), ("OVEN", "retrieval", True), ("EDIS", "retrieval", True),
    ("MSCOCO", "grounding", False), ("RefCOCO", "grounding", True), ("RefCOCO-Matching", "grounding", True),
    ("Visual7W-Pointing", "grounding", True),
]
_mmeb: list[str] = []
for _subset, _meta, _ood in MMEB_EVAL:
    _spec = {"name": _subset, "meta_task": _meta, "ood": _ood, "subset": _subset}
    _mmeb.append(register_benchmark(Benchmark(
        "mmeb-" + _subset.lower().replace("_", "-"), "mmeb", "embedding", _meta, "precision@1",
        DataRef("bench-root", "MMEB-eval"), options={"datasets": [_spec]},
        description=f"MMEB {_meta}{' (OOD)' if _ood else ''}: {_subset} from your MMEB-eval copy")).name)
register_benchmark(Benchmark(
    "mmeb-all", "mmeb", "embedding", "universal embedding", "precision@1", DataRef("bench-root", "MMEB-eval"),
    options={"datasets": [{"name": n, "meta_task": m, "ood": o, "subset": n} for n, m, o in MMEB_EVAL]},
    description="MMEB: all 36 sets in one table (overall, per meta-task, IND / OOD) from your MMEB-eval copy"))
register_suite(Suite("mmeb", "MMEB's 36 evaluation sets, one benchmark each (mmeb-all: the whole table)", tuple(_mmeb)))

# ------------------------------------------------------------------------------ UniBench, user-supplied shards
# (folder under --bench-root, type, capability): clip_benchmark `wds` folder names.
_UNIBENCH_ZS = [
    ("imagenet1k", "object recognition", "object recognition"),
    ("cifar10", "object recognition", "object recognition"),
    ("cifar100", "object recognition", "object recognition"),
    ("vtab/caltech101", "object recognition", "object recognition"),
    ("vtab/pets", "object recognition", "object recognition"),
    ("vtab/flowers", "object recognition", "object recognition"),
    ("cars", "object recognition", "object recognition"),
    ("fgvc_aircraft", "object recognition", "object recognition"),
    ("food101", "object recognition", "object recognition"),
    ("sun397", "object recognition", "scene recognition"),
    ("country211", "object recognition", "geographic diversity"),
    ("imagenet-a", "robustness", "adversarial"),
    ("imagenet-r", "robustness", "rendition"),
    ("imagenet_sketch", "robustness", "sketch"),
    ("imagenetv2", "robustness", "distribution shift"),
    ("objectnet", "robustness", "distribution shift"),
    ("imagenet-c", "corruption", "image corruptions"),
    ("vtab/dtd", "texture", "texture detection"),
    ("vtab/eurosat", "non-natural", "satellite"),
    ("vtab/resisc45", "non-natural", "satellite"),
    ("vtab/pcam", "non-natural", "medical"),
    ("vtab/diabetic_retinopathy", "non-natural", "medical"),
    ("mnist", "non-natural", "character recognition"),
    ("vtab/svhn", "non-natural", "character recognition"),
    ("renderedsst2", "non-natural", "character recognition"),
    ("vtab/clevr_count_all", "reasoning", "counting"),
    ("vtab/clevr_closest_object_distance", "reasoning", "depth estimation"),
    ("vtab/dsprites_label_x_position", "reasoning", "spatial"),
    ("vtab/dsprites_label_orientation", "reasoning", "pose detection"),
    ("vtab/smallnorb_label_azimuth", "reasoning", "pose detection"),
    ("vtab/kitti_closest_vehicle_distance", "reasoning", "depth estimation"),
]
_UNIBENCH_REL = [("sugarcrepe", "relation", "relation"), ("winoground", "relation", "relation"),
                 ("vg_relation", "relation", "relation"), ("vg_attribution", "relation", "attributes"),
                 ("coco_order", "relation", "word order"), ("flickr30k_order", "relation", "word order")]

_unibench: list[str] = []
for folder, typ, cap in _UNIBENCH_ZS:
    name = "ub-" + folder.replace("vtab/", "").replace("_", "-")
    register_benchmark(Benchmark(name, "zeroshot", typ, cap, "top1", DataRef("bench-root", "wds_" + folder.replace("/", "-")),
                                 description=f"UniBench {typ}: zero-shot on your wds_{folder.replace('/', '-')} shards"))
    _unibench.append(name)
for folder, typ, cap in _UNIBENCH_REL:
    name = "ub-" + folder.replace("_", "-")
    register_benchmark(Benchmark(name, "relation", typ, cap, "accuracy", DataRef("bench-root", folder),
                                 options={"mode": "given"},
                                 description=f"UniBench {typ}: caption order on your {folder} shards (json captions, 0 true)"))
    _unibench.append(name)
for name, folder in (("ub-flickr30k", "wds_flickr30k"), ("ub-mscoco", "wds_mscoco_captions")):
    register_benchmark(Benchmark(name, "retrieval", "relation", "image-text retrieval", "mean_recall",
                                 DataRef("bench-root", folder), description=f"retrieval on your {folder} shards (jpg + txt)"))
    _unibench.append(name)
register_suite(Suite("unibench", "UniBench's benchmark types over clip_benchmark wds folders under --bench-root",
                     tuple(_unibench)))

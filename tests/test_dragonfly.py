"""Dragonfly family: crop geometry, a fixed token budget at any resolution, zoom-in selection of the
crop holding a planted detail (visual and text-conditioned), checkpoint round trip, KV-cache generation."""
import io
import json

import pytest
import torch
import torch.nn.functional as F
from helpers_model import lm_loss
from PIL import Image, ImageDraw
from test_train_common import load_study

import vlm
from encoders.base import Encoder, GridTokens
from vlm.connectors.zoom import (
    ZoomSelect,
    ZoomSettings,
    choose_grid,
    grid_boxes,
    high_boxes,
    locate,
    salient_scores,
    select_top_k,
    zoom_scores,
)
from vlm.data.collate import collate
from vlm.errors import UserError
from vlm.families import build

GREY = (128, 128, 128)


@pytest.fixture(scope="module")
def tiny():
    return build("dragonfly", "tiny", selection="visual").eval()


@pytest.fixture(scope="module")
def tiny_text():
    return build("dragonfly", "tiny", selection="text", top_k=2)


def _sample(model, image, q="What colour is the small shape?", a="red"):
    turns = [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]
    return model.processor({"conversations": turns}, media={"image": [image]})


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("size, grid", [((1000, 1000), (2, 2)), ((64, 64), (2, 2)), ((1600, 400), (1, 4)),
                                        ((1200, 400), (1, 4)), ((400, 1600), (4, 1)), ((4096, 900), (1, 4)),
                                        ((1300, 1000), (2, 2))])
def test_grid_follows_the_aspect_ratio_and_crops_tile_the_image(size, grid):
    s = ZoomSettings()
    for tile in ((336, 336), (32, 32)):
        assert choose_grid(size, s.mid_grids, tile) == grid
    w, h = size
    mids, highs = grid_boxes(size, grid), high_boxes(size, grid, 3)
    assert len(mids) == 4 and len(highs) == 36
    for boxes in (mids, highs):   # no gaps, no overlaps: the areas add up to the image
        assert sum((r - l) * (b - t) for l, t, r, b in boxes) == pytest.approx(w * h)
        assert all(0 <= l < r <= w + 1e-6 and 0 <= t < b <= h + 1e-6 for l, t, r, b in boxes)
    for j, (l, t, r, b) in enumerate(highs):   # high crops are grouped by the mid crop that contains them
        L, T, R, B = mids[j // 9]
        assert L - 1e-6 <= l and r <= R + 1e-6 and T - 1e-6 <= t and b <= B + 1e-6
        cx, cy = (l + r) / 2, (t + b) / 2
        assert locate((cx, cy), size, grid, 3) == (j // 9, j % 9)


def test_stored_crops_show_the_image_regions_they_claim(tiny):
    """A red dot lands in exactly the mid / high crop `locate` names; the low view is the whole image."""
    pre = tiny.media["image"].preprocess
    for size, dot in [((1200, 900), (1100, 70)), ((1600, 400), (250, 330)), ((300, 1500), (40, 700))]:
        img = Image.new("RGB", size, GREY)
        ImageDraw.Draw(img).ellipse([dot[0] - 12, dot[1] - 12, dot[0] + 12, dot[1] + 12], fill=(255, 0, 0))
        x = pre(img)                                                   # [41, 3, 32, 32]
        assert x.shape == (41, 3, 32, 32)
        redness = (x[:, 0] - x[:, 1]).amax((1, 2))                     # [41]
        mid, slot = locate(dot, size, pre.grid(img), 3)
        assert redness[1:5].argmax().item() == mid
        assert redness[5:].argmax().item() == mid * 9 + slot
        assert redness[0] > 0.5                                        # a 24-px dot still tints the 32-px view


# ------------------------------------------------------------------ budget
def test_budget_is_fixed_from_64_to_4096_px_and_embed_accepts_it(tiny):
    s = tiny.media["image"].zoom_settings
    assert s.budget(16, 4) == 16 + 4 * 5 + 12 * 5 == 96
    sizes = [(64, 64), (4096, 4096), (4096, 512), (100, 1500), (1344, 1344), (333, 77)]
    samples = [_sample(tiny, Image.new("RGB", sz, GREY)) for sz in sizes]
    for smp in samples:
        assert smp.media["image"][0].shape == (41, 3, 32, 32)
        assert tiny.num_media_tokens("image", smp.media["image"][0]) == 96
        assert smp.input_ids.count(tiny.placeholder_id["image"]) == 96
    batch = collate(samples, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        feats = tiny.media["image"](batch["media"]["image"])
        loss = lm_loss(tiny, batch)                                    # embed: placeholders == features
    assert [f.shape for f in feats] == [(96, 64)] * len(sizes) and torch.isfinite(loss)
    with pytest.raises(UserError, match="dragonfly image item"):
        tiny.num_media_tokens("image", torch.zeros(3, 32, 32))


@pytest.mark.parametrize("vision, budget", [({"name": "tiny-clip", "feature_select": "full"}, 17 + 16 * 6),
                                            ("tiny-siglip", 16 + 16 * 5)])
def test_any_image_encoder_with_a_patch_grid_works(vision, budget):
    """A CLS-prefixed encoder (kept through pooling: 1 + 2x2 per crop) and a prefix-free one alike."""
    m = build("dragonfly", "tiny", vision=vision).eval()
    s = _sample(m, Image.new("RGB", (700, 300), GREY))
    assert s.input_ids.count(m.placeholder_id["image"]) == budget
    with torch.no_grad():
        assert torch.isfinite(lm_loss(m, collate([s], m.tokenizer.pad_token_id)))


def test_05b_preset_budget_on_a_meta_skeleton():
    with torch.device("meta"):
        m = build("dragonfly", "0.5b")
    for sz in [(64, 64), (4096, 2048)]:
        item = m.processor.preprocess_media("image", Image.new("RGB", sz))
        assert item.shape == (41, 3, 336, 336) and m.num_media_tokens("image", item) == 577 + 16 * 38 == 1185


# ------------------------------------------------------------------ selection
def test_scores_pick_the_crop_aligned_with_the_query():
    g = torch.Generator().manual_seed(0)
    mid, high = torch.randn(2, 4, 5, 8, generator=g) * 0.01, torch.randn(2, 4, 9, 5, 8, generator=g) * 0.01
    mid[1, 2, :, 0] = 1.0                          # region 2 of image 1 "is about" dim 0 ...
    high[1, 2, 6, :, 0] = 3.0                      # ... and its crop 6 most of all
    high[1, 2, 1, :, 3] = 5.0                      # crop 1 is about dim 3
    zoom = ZoomSelect(ZoomSettings(top_k=1), 8)
    _, picked, _ = zoom(torch.zeros(2, 3, 8), mid, high)                # visual: . mid crop mean
    assert picked[1, 2].tolist() == [6]
    text = torch.zeros(2, 4, 8)
    text[1, :, 3] = 1.0                                                  # "the question is about dim 3"
    assert select_top_k(zoom_scores(high, text), 1)[1, 2].tolist() == [1]
    assert select_top_k(salient_scores(high), 1)[1, 2].tolist() == [1]      # the farthest from its neighbours
    tokens, picked, _ = ZoomSelect(ZoomSettings(top_k=3), 8)(torch.zeros(2, 3, 8), mid, high, text)
    assert tokens.shape == (2, ZoomSettings(top_k=3).budget(3, 5), 8) and 1 in picked[1, 2].tolist()
    assert torch.equal(picked, picked.sort(-1).values)                  # kept in position order


class PatchColour(Encoder):
    """Per 8x8 patch: [redness, 1, greenness, 0...] of the normalised pixels -> [B, 16, 64]."""
    modality, output_dim, name, feature_layer = "image", 64, "patch-colour", -1

    def __init__(self, preprocess):
        super().__init__()
        self.preprocess = preprocess

    def forward(self, x):
        r, g, b = x.unbind(1)                                            # [B, 32, 32] each
        red, green = (r - (g + b) / 2 - 1).clamp(min=0), (g - (r + b) / 2 - 1).clamp(min=0)
        f = F.avg_pool2d(torch.stack([red, torch.ones_like(r), green], 1), 8)  # [B, 3, 4, 4]
        return F.pad(f.flatten(2).transpose(1, 2), (0, 61))              # [B, 16, 64]

    def patch_grid(self, item):
        return item.shape[-2] // 8, item.shape[-1] // 8

    def token_count(self):
        return GridTokens((8, 8))


def _colour_model(selection):
    """dragonfly-tiny with features that see red / green and an identity projector; the words 'red' and
    'green' embed along the red / green feature axes, every other token at 0."""
    m = build("dragonfly", "tiny", projector="linear", selection=selection, top_k=1).eval()
    m.replace_encoder("image", PatchColour(m.encoders["image"].preprocess))
    with torch.no_grad():
        m.media["image"].projector.linear_1.weight.copy_(torch.eye(64))
        m.media["image"].projector.linear_1.bias.zero_()
        emb = m.parts.embed_tokens.weight
        emb.zero_()
        ids = {c: set(m.tokenizer(f"Is the shape {c}?")["input_ids"]) for c in ("red", "green")}
        emb[list(ids["red"] - ids["green"]), 0] = 1.0
        emb[list(ids["green"] - ids["red"]), 2] = 1.0
    return m


def _picked(model, image, question):
    seen = []
    hook = model.media["image"].zoom.register_forward_hook(lambda mod, inp, out: seen.append(out[1]))
    p = model.processor.prompt(f"<image>\n{question}", {"image": [image]})
    with torch.no_grad():
        model(torch.tensor([p.input_ids]), media=p.media)
    hook.remove()
    return seen[0][0]                                                    # [M, k] of the one image


def test_zoom_selects_the_crop_with_the_planted_detail_visual_text_salient():
    """1200 px image, 2x2 mid grid, 6x6 high grid of 200 px cells. Mid region 1 holds a 60-px red square
    (high cell row 1, col 4) and a 30-px green one (row 2, col 5)."""
    size, red, green = (1200, 1200), (900, 300), (1100, 500)
    img = Image.new("RGB", size, GREY)
    d = ImageDraw.Draw(img)
    d.rectangle([red[0] - 30, red[1] - 30, red[0] + 30, red[1] + 30], fill=(255, 0, 0))
    d.rectangle([green[0] - 15, green[1] - 15, green[0] + 15, green[1] + 15], fill=(0, 255, 0))
    (m_red, s_red), (m_green, s_green) = locate(red, size, (2, 2), 3), locate(green, size, (2, 2), 3)
    assert (m_red, s_red, m_green, s_green) == (1, 4, 1, 8)
    # visual (the reference): the crop most like its mid region, where red dominates
    assert _picked(_colour_model("visual"), img, "Is the shape green?")[1].tolist() == [s_red]
    # text-conditioned: the crop that matches the question
    text = _colour_model("text")
    assert _picked(text, img, "Is the shape green?")[1].tolist() == [s_green]
    assert _picked(text, img, "Is the shape red?")[1].tolist() == [s_red]
    # salient: the crop least like the other crops of its region
    assert _picked(_colour_model("salient"), img, "Is the shape green?")[1].tolist() == [s_red]


def test_text_selection_in_a_packed_row_reads_each_samples_own_question():
    """Two samples asking about different squares: packed into one row, each image keeps the crop of the
    square its own question names, as when the samples are padded in separate rows."""
    from vlm.data.packing import pack_rows
    size, red, green = (1200, 1200), (900, 300), (1100, 500)
    img = Image.new("RGB", size, GREY)
    d = ImageDraw.Draw(img)
    d.rectangle([red[0] - 30, red[1] - 30, red[0] + 30, red[1] + 30], fill=(255, 0, 0))
    d.rectangle([green[0] - 15, green[1] - 15, green[0] + 15, green[1] + 15], fill=(0, 255, 0))
    model = _colour_model("text")
    samples = [_sample(model, img, f"Is the shape {c}?", "yes") for c in ("green", "red")]
    pad = model.tokenizer.pad_token_id
    padded = collate(samples, pad)
    packed = pack_rows([samples], sum(len(x) for x in samples) + 3, pad, ["a", "b"])

    def picks(batch):
        seen = []
        hook = model.media["image"].zoom.register_forward_hook(lambda mod, inp, out: seen.append(out[1]))
        with torch.no_grad():
            model(**{k: batch[k] for k in ("input_ids", "labels", "attention_mask", "position_ids", "media")
                     if batch.get(k) is not None})
        hook.remove()
        return seen[0][:, 1].flatten().tolist()                          # the kept crop of mid region 1, per image
    assert picks(padded) == [8, 4]                                       # green's crop, then red's
    assert picks(packed) == picks(padded)


def test_scoring_candidate_answers_zooms_on_the_prompt_alone(tmp_path, tiny_text):
    """Likelihood scoring (`vlm eval` multiple choice, lmms-eval's multiple_choice) put each candidate answer into
    the text-conditioned zoom's query, so every choice was read on crops of its own choosing (a review). The
    query is now the prompt's, as in training and generation, for any candidate."""
    from benchmarks.models import load_model
    tiny_text.save_pretrained(tmp_path / "m")
    m = load_model(str(tmp_path / "m"))
    m.load()
    queries = []
    hook = m.model.media["image"].zoom.register_forward_hook(lambda mod, inp, out: queries.append(inp[3].clone()))
    img = Image.new("RGB", (600, 400), "red")
    prompt = ("<image>\nWhat colour is the small shape?", {"image": [img]})
    m.loglikelihood([(*prompt, " red"), (*prompt, " a green square beside a blue circle")], batch_size=1)
    m.generate([prompt], 1)
    hook.remove()
    assert len(queries) == 3 and all(torch.equal(q, queries[2]) for q in queries[:2])


# ------------------------------------------------------------------ save / load, generation
def test_checkpoint_round_trip_identical_logits(tmp_path, tiny_text):
    model = tiny_text.train()
    s = _sample(model, Image.new("RGB", (900, 300), (200, 40, 40)))
    batch = collate([s, s], model.tokenizer.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    zoom = model.media["image"].zoom
    sep0 = zoom.separator.detach().clone()
    lm_loss(model, batch).backward()
    opt.step()
    assert not torch.equal(zoom.separator, sep0)                        # the separators train with the projector
    model.eval()
    loaded = vlm.load(model.save_pretrained(tmp_path / "df"))
    assert loaded.media["image"].zoom_settings == model.media["image"].zoom_settings
    conn = loaded.config.media["image"]
    assert conn["type"] == "zoom" and conn["top_k"] == 2 and conn["selection"] == "text"
    with torch.no_grad():
        args = batch["input_ids"], batch["attention_mask"]
        assert torch.equal(model.logits(*args, media=batch["media"]), loaded.logits(*args, media=batch["media"]))


@pytest.mark.parametrize("selection", ["visual", "text"])
def test_generation_same_tokens_with_and_without_kv_cache(selection, tiny, tiny_text):
    model = (tiny if selection == "visual" else tiny_text).eval()
    p1 = model.processor.prompt("<image>\nWhat colour is the small shape?", {"image": [Image.new("RGB", (1300, 700))]})
    p2 = model.processor.prompt("Shape?\n<image>", {"image": [Image.new("RGB", (64, 200), (0, 0, 255))]})
    b = collate([p1, p2], model.tokenizer.pad_token_id, left_pad=True)
    kw = dict(media=b["media"], attention_mask=b["attention_mask"], max_new_tokens=8, eos_token_id=-1)
    assert model.generate(b["input_ids"], use_cache=True, **kw) == model.generate(b["input_ids"], use_cache=False, **kw)


def test_bad_settings_are_one_line_errors():
    for kw, msg in [(dict(top_k=10), "top_k"), (dict(selection="attention"), "selection"),
                    (dict(mid_grids=[[2, 2], [1, 3]]), "same number of crops")]:
        with pytest.raises(UserError, match=msg):
            build("dragonfly", "tiny", **kw)
    # in a recipe each is named by its setting (they all said "recipe field 'model'": a review)
    from vlm.train.recipe import load_recipe, model_skeleton
    for override, field in (("top_k=0", "top_k"), ("factor=0", "factor"), ("pool=0", "pool"),
                            ("mid_grids=[]", "mid_grids"), ("mid_grids=[[1,2],[2,2]]", "mid_grids")):
        with pytest.raises(UserError, match=rf"^recipe field 'model.settings.{field}': the zoom"):
            model_skeleton(load_recipe("dragonfly-tiny", [f"model.settings.{override}"], check_files=False).model)


def test_fine_detail_study_recipes_and_selection_hits(tmp_path):
    """benchmarks/studies/fine_detail_compare.py: every run's recipe file validates on a --tasks subset, and
    the selection hit rate counts the images whose kept crops hold the small object (top_k=9 keeps all)."""
    study = load_study("fine_detail_compare")
    RUNS, TASKS, fine_detail_samples, selection_hits = (study.RUNS, study.TASKS, study.fine_detail_samples,
                                                        study.selection_hits)
    from vlm.data.synthetic import build_synthetic_world
    data = tmp_path / "fd"
    build_synthetic_world(data, samples=60, tasks=TASKS, eval_per_task=3, splits=("train", "test"),
                          classification=False, workers=1)
    for name in RUNS:
        recipe = study.study_recipe(name, data)                        # typed and validated, files checked
        assert recipe.data["world"].shards == [str(data / "train")]
    samples = fine_detail_samples(data)
    assert len(samples) == 3 and all(lab["bbox"] and img.size[0] >= 1024 for img, _, lab in samples)
    assert selection_hits(build("dragonfly", "tiny", top_k=9), samples) == 1.0
    # top_k=1 on the hand-built image of the selection test: the question-conditioned model keeps exactly the
    # crop of the square it is asked about, so the hit rate is 1 for the asked square and 0 for the other
    size, red, green = (1200, 1200), (900, 300), (1100, 500)
    img = Image.new("RGB", size, GREY)
    d = ImageDraw.Draw(img)
    d.rectangle([red[0] - 30, red[1] - 30, red[0] + 30, red[1] + 30], fill=(255, 0, 0))
    d.rectangle([green[0] - 15, green[1] - 15, green[0] + 15, green[1] + 15], fill=(0, 255, 0))
    box = {"red": [870, 270, 930, 330], "green": [1085, 485, 1115, 515]}
    text = _colour_model("text")
    asked = [(img, f"<image>\nIs the shape {c}?", {"bbox": box[c]}) for c in ("green", "red")]
    other = [(img, f"<image>\nIs the shape {c}?", {"bbox": box[o]}) for c, o in (("green", "red"), ("red", "green"))]
    assert selection_hits(text, asked) == 1.0 and selection_hits(text, other) == 0.0
    assert selection_hits(text, asked + other) == 0.5
    assert selection_hits(_colour_model("visual"), asked) == 0.5        # the question-blind rule keeps red's crop


# ------------------------------------------------------------------ learning where to look
def test_text_score_trains_straight_through_with_an_unchanged_forward(tiny_text):
    """The kept crops' tokens are multiplied by 1 + p - p.detach(): the same tokens as without gradients,
    and the LM loss's gradient reaches the text score's query / key maps."""
    model = tiny_text.train()
    batch = collate([_sample(model, Image.new("RGB", (900, 300), (200, 40, 40)))], model.tokenizer.pad_token_id)
    zoom = model.media["image"]
    with torch.no_grad():
        plain = zoom.zoom_tokens(batch["media"]["image"])[0]
    assert torch.equal(zoom.zoom_tokens(batch["media"]["image"])[0], plain)
    model.zero_grad()
    lm_loss(model, batch).backward()
    assert zoom.zoom.query.weight.grad.abs().sum() > 0 and zoom.zoom.key.weight.grad.abs().sum() > 0


def test_grounded_batches_focus_the_box_and_the_relevance_loss_teaches_the_zoom(tmp_path):
    """`grounded_chat` finds the high crop of each fine-detail sample's box on the draft-decoded image (the
    same crop as on the full image), packs and pads alike; `grounded_next_token` with weight 0 is
    next_token; trained on the relevance loss, the text score keeps the box's crop on held-out images far
    more often than before training."""
    from vlm.data.decode import draft_size_of
    from vlm.data.formats import build_format
    from vlm.data.reader import expand_shards, read_fields, scan_shard
    from vlm.data.synthetic import build_synthetic_world
    from vlm.train.objectives import build_objective
    from vlm.train.objectives.grounded import relevance_loss
    build_synthetic_world(tmp_path, samples=96, tasks=["fine_detail"], eval_per_task=48, splits=("train", "val"),
                          classification=False, workers=1)
    torch.manual_seed(0)
    model = build("dragonfly", "tiny", selection="text", top_k=1)
    pre = model.processor.preprocess["image"]
    fmt = build_format("grounded_chat", model.processor, 256, draft_size_of(pre))

    def items(split):
        out = []
        for shard in expand_shards(str(tmp_path / split)):
            for ref in scan_shard(shard):
                fields = read_fields(ref)
                item, _ = fmt.make(ref.key, fields, shard)
                full = Image.open(io.BytesIO(fields["jpg"]))
                box = json.loads(fields["json"])["labels"]["bbox"]
                assert item.focus == [pre.focus(full.size, box)] and pre.focus(full.size, box) >= 0
                out.append(item)
        return out
    train, val = items("train"), items("val")
    assert len(train) == 96 and len(val) == 48
    pad = model.tokenizer.pad_token_id
    padded, packed = fmt.collate(train[:4], pad), fmt.pack([train[:2], train[2:4]], pad, ["k"] * 4)
    assert torch.equal(padded["focus"], packed["focus"]) and padded["focus"].tolist() == [t.focus[0] for t in train[:4]]
    assert torch.equal(fmt.collate([train[0]], pad)["focus"], torch.tensor(train[0].focus))

    plain, grounded = build_objective("next_token", {}), build_objective("grounded_next_token", {"relevance_weight": 0})
    with torch.no_grad():
        assert torch.equal(plain(model, padded).loss, grounded(model, padded).loss)

    def top1(batch):
        with torch.no_grad():
            scores = model.media["image"].zoom_tokens(batch["media"]["image"], None)[2]
        return relevance_loss(scores, batch["focus"])[2] / batch["focus"].numel()
    for p in model.parameters():
        p.requires_grad_(False)
    zoom = model.media["image"].zoom
    for p in [*zoom.query.parameters(), *zoom.key.parameters()]:
        p.requires_grad_(True)
    # the query falls back to the visual query without a prompt (context None): train it that way too
    held_out = fmt.collate(val, pad)
    before = top1(held_out)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = fmt.collate([train[i] for i in torch.randperm(len(train), generator=g)[:16].tolist()], pad)
        scores = model.media["image"].zoom_tokens(batch["media"]["image"], None)[2]
        ce, n, _ = relevance_loss(scores, batch["focus"])
        opt.zero_grad()
        (ce / n).backward()
        opt.step()
    after = top1(held_out)
    assert before < 0.3 and after > 0.6, (before, after)


def test_grounded_recipe_trains_through_the_trainer_and_bad_boxes_are_sample_errors(tmp_path):
    """The study's grounded run trains end to end (the trainer's loader builds `grounded_chat` batches, the
    relevance term is logged); a malformed bbox is a SampleError (skipped and counted), a model without a
    zoom a one-line error."""
    from vlm.data.decode import SampleError
    from vlm.data.formats import build_format
    from vlm.data.reader import expand_shards, read_fields, scan_shard
    from vlm.data.synthetic import build_synthetic_world
    from vlm.train import train
    from vlm.train.recipe import smoke_recipe
    study = load_study("fine_detail_compare")
    data = tmp_path / "fd"
    build_synthetic_world(data, samples=24, tasks=["fine_detail"], eval_per_task=2, splits=("train",),
                          classification=False, workers=1)
    _, extra = study.RUNS["dragonfly-tiny-grounded"]
    recipe = smoke_recipe(str(study.RECIPES / "fine-detail-dragonfly.yaml"), tmp_path / "run", steps=2, batch=4,
                          overrides=[f"data.world.shards=[{data / 'train'}]", "stages.0.filter={}", *extra])
    train(recipe, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("grounded_images", 0) > 0 and r.get("relevance_ce", -1) >= 0 for r in logged)

    model = build("dragonfly", "tiny", selection="text")
    fmt = build_format("grounded_chat", model.processor, 256)
    ref = next(scan_shard(expand_shards(str(data / "train"))[0]))
    fields = read_fields(ref)
    meta = json.loads(fields["json"])
    meta["labels"]["bbox"] = [10, 20, "x", 40]
    with pytest.raises(SampleError, match="bbox") as e:
        fmt.make(ref.key, {**fields, "json": json.dumps(meta).encode()}, ref.shard)
    assert e.value.reason == "bad_bbox"
    with pytest.raises(UserError, match="zooms"):
        build_format("grounded_chat", build("llava", "tiny").processor, 256)


def test_a_grounded_box_turns_with_an_exif_orientation():
    """Decoding applies the EXIF orientation; the box (in the stored pixels, as datasets annotate) was only
    scaled, so the focus pointed at another crop of the turned image. Every orientation: the box's region in
    the decoded image is where `upright_box` puts it; the focus equals that of the same picture stored upright."""
    import numpy as np

    from vlm.data.decode import draft_size_of
    from vlm.data.formats import build_format
    from vlm.modalities import decode_image, upright_box
    w, h, box = 40, 20, (5, 3, 12, 9)
    a = np.zeros((h, w, 3), np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = 255
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", exif=exif)
        ys, xs = np.nonzero(np.asarray(decode_image(buf.getvalue()))[:, :, 0] > 128)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == upright_box(box, (w, h), o), o

    model = build("dragonfly", "tiny")
    pre = model.processor.preprocess["image"]
    fmt = build_format("grounded_chat", model.processor, 256, draft_size_of(pre))
    g = torch.Generator().manual_seed(0)
    picture = Image.fromarray(torch.randint(0, 256, (200, 400, 3), generator=g, dtype=torch.uint8).numpy())
    stored_box = [300, 20, 390, 60]
    turned = picture.transpose(Image.Transpose.ROTATE_90)        # what orientation 6 undoes, stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = io.BytesIO()
    turned.save(sideways, format="JPEG", exif=exif, quality=95)
    upright_jpg = io.BytesIO()
    picture.save(upright_jpg, format="JPEG", quality=95)
    conv = [{"from": "human", "value": "<image>\nWhat is in the box?"}, {"from": "gpt", "value": "a thing"}]
    sideways_box = [20, 10, 60, 100]                   # stored_box in the sideways pixels (ROTATE_90 of 400x200)
    assert upright_box(tuple(sideways_box), turned.size, 6) == tuple(stored_box)
    items = []
    for jpg, bbox in ((sideways.getvalue(), sideways_box), (upright_jpg.getvalue(), stored_box)):
        fields = {"jpg": jpg, "json": json.dumps({"conversations": conv, "labels": {"bbox": bbox}}).encode()}
        items.append(fmt.make("k", fields, "shard")[0])
    assert items[0].focus == items[1].focus == [pre.focus(picture.size, stored_box)]

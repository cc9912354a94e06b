"""Dragonfly zoom: multi-resolution crops of one image, per-crop pooling and zoom-in patch selection
at a fixed visual-token budget: the `zoom` media tokenizer (`vlm/families/dragonfly.py` names it).

Views of one image, every crop at the encoder's own size S = (Sh, Sw):
  low    the whole image squashed to S                                     1 crop, all tokens kept
  mid    the image squashed to a grid of crops chosen by aspect ratio      M crops (2x2, 1x4 or 4x1)
  high   the image squashed to `factor` x the mid grid                     M * factor^2 crops
The preprocessed item is ONE tensor [1 + M + M*f*f, 3, Sh, Sw]: the low view, the mid crops in
raster order, then the high crops grouped by the mid crop they lie in (raster order inside it), so
the model knows which high crops belong to which mid region without knowing the grid. Every image,
any size or aspect, gives the same shape and the same number of LLM tokens:
  low tokens + M * (pooled + sep) + M * top_k * (pooled + sep)
e.g. CLIP ViT-L/14-336 with CLS, pool 4, top-3: 577 + 4 * 38 + 12 * 38 = 1,185.

As the reference (togethercomputer/Dragonfly) does it: grid options 2x2 / 1x4 / 4x1 picked by
LLaVA-NeXT's best-fit rule (most effective pixels, then least waste), resize-then-tile, high =
3x the mid grid (v2), 4x4 average pooling of each crop's token grid keeping CLS (v2), top-3 high
crops per mid region scored by the dot product of mean projected tokens (v1).
Ours, on purpose: a high crop belongs to the mid crop that contains it (the v1 code scores runs of
6 crops in raster order of a separately chosen 24-crop grid, which are rows, not mid regions);
pooling runs before the projector (the same as the reference's project-then-pool for a linear
projector, 16x cheaper for the MLP) and scores use the pooled tokens; a learned separator after
each crop; a learned text-conditioned score and a salient score (each high crop's distance from its
region's mean crop).

The text score is `query(prompt mean embedding) . key(high crop mean token) / sqrt(D)` with two D x D
linear maps that start as the identity (untrained: the plain dot product). It learns two ways, both
optional: (1) straight through from the LM loss: the kept crops' tokens are multiplied by
`1 + p - p.detach()` (p: the softmax of the region's scores at the kept crops), exactly 1 in the forward
pass, so the loss's gradient reaches the scores of the crops it used; (2) a relevance loss where the data
says which region the answer is about (`grounded_next_token`, vlm/train/objectives/grounded.py): the
cross-entropy of that region's scores against the high crop holding the box centre (`ZoomPreprocess.focus`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from encoders.base import TokenCount, as_pil, pool_grid
from vlm.connectors.base import MEDIA, MediaContext, MediaTokenizer, build_projector
from vlm.errors import UserError, require

Grid = tuple[int, int]                       # (rows, cols)
Box = tuple[float, float, float, float]      # (left, top, right, bottom) in image pixels
SELECTIONS = ("visual", "text", "salient")


@dataclass(frozen=True)
class ZoomSettings:
    """Everything that fixes the geometry and the token budget (the zoom connector's settings)."""
    mid_grids: tuple[Grid, ...] = ((2, 2), (4, 1), (1, 4))  # (rows, cols); the reference's (w, h) 2x2, 1x4, 4x1
    factor: int = 3                # high grid = factor x mid grid (reference: 3)
    pool: int = 4                  # average-pool kernel over each mid / high crop's token grid (reference v2: 4)
    top_k: int = 3                 # high crops kept per mid region (reference v1: 3; factor**2 keeps all)
    selection: str = "visual"      # visual: . mid crop mean (reference) | text: . prompt mean | salient: odd one out
    separator: bool = True         # a learned token after each mid / high crop

    def __post_init__(self) -> None:
        grids = tuple((int(r), int(c)) for r, c in self.mid_grids)
        object.__setattr__(self, "mid_grids", grids)
        # (each message starts with the setting's name: a recipe error names model.settings.<it>)
        require(bool(grids) and all(r >= 1 and c >= 1 for r, c in grids),
                f"mid_grids: the zoom's mid grids must be (rows, cols) >= 1, got {list(grids)}")
        require(len({r * c for r, c in grids}) == 1,
                f"mid_grids: the zoom's mid grids must all have the same number of crops (a fixed budget), got "
                f"{list(grids)}")
        require(self.factor >= 1, f"factor: the zoom factor must be >= 1, got {self.factor}")
        require(self.pool >= 1, f"pool: the zoom pool must be >= 1, got {self.pool}")
        require(1 <= self.top_k <= self.factor ** 2,
                f"top_k: the zoom's top_k must be in 1..{self.factor ** 2} (factor {self.factor} squared), got {self.top_k}")
        require(self.selection in SELECTIONS, f"zoom selection must be one of {SELECTIONS}, not '{self.selection}'")

    @property
    def n_mid(self) -> int:
        return self.mid_grids[0][0] * self.mid_grids[0][1]

    @property
    def n_views(self) -> int:
        """Crops in one preprocessed item: low + mid + high."""
        return 1 + self.n_mid + self.n_mid * self.factor ** 2

    def budget(self, low_tokens: int, crop_tokens: int) -> int:
        """LLM tokens per image: the low view's tokens, then each mid crop and each kept high crop
        (`crop_tokens` after pooling) with its separator."""
        per = crop_tokens + int(self.separator)
        return low_tokens + self.n_mid * per + self.n_mid * self.top_k * per

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mid_grids"] = [list(g) for g in self.mid_grids]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = False) -> ZoomSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        require(not (strict and unknown), f"unknown zoom settings {unknown}; known: {sorted(known)}")
        kw = {k: v for k, v in d.items() if k in known}
        if "mid_grids" in kw:
            kw["mid_grids"] = tuple(tuple(g) for g in kw["mid_grids"])
        return cls(**kw)


def pooled_tokens(grid: Grid, prefix: int, pool: int) -> int:
    """Tokens of one crop after `encoders.base.pool_grid` (ceil mode), prefix tokens kept."""
    return prefix + math.ceil(grid[0] / pool) * math.ceil(grid[1] / pool)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def choose_grid(size: tuple[int, int], options: tuple[Grid, ...], tile: tuple[int, int]) -> Grid:
    """The mid grid for an image of `size` (w, h) with crops of `tile` (h, w): LLaVA-NeXT's best fit,
    most effective pixels after an aspect-preserving fit, then least wasted area; first on a tie."""
    w, h = size
    best, best_eff, best_waste = options[0], -1, math.inf
    for rows, cols in options:
        gw, gh = cols * tile[1], rows * tile[0]
        scale = min(gw / w, gh / h)
        eff = min(int(w * scale) * int(h * scale), w * h)
        waste = gw * gh - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (rows, cols), eff, waste
    return best


def grid_boxes(size: tuple[int, int], grid: Grid) -> list[Box]:
    """The image region (left, top, right, bottom) of each crop of `grid`, raster order."""
    w, h = size
    rows, cols = grid
    return [(c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
            for r in range(rows) for c in range(cols)]


def high_order(grid: Grid, factor: int) -> list[tuple[int, int]]:
    """(row, col) in the high grid of each stored high crop: grouped by mid crop, raster inside it."""
    rows, cols = grid
    return [(r * factor + i, c * factor + j)
            for r in range(rows) for c in range(cols) for i in range(factor) for j in range(factor)]


def high_boxes(size: tuple[int, int], grid: Grid, factor: int) -> list[Box]:
    """The image region of each stored high crop (in `high_order`)."""
    w, h = size
    rows, cols = grid[0] * factor, grid[1] * factor
    return [(c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows) for r, c in high_order(grid, factor)]


def locate(point: tuple[float, float], size: tuple[int, int], grid: Grid, factor: int) -> tuple[int, int]:
    """(mid crop index, slot among its factor^2 high crops) of the high crop holding pixel `point` (x, y)."""
    (x, y), (w, h) = point, size
    r = min(int(y * grid[0] * factor / h), grid[0] * factor - 1)
    c = min(int(x * grid[1] * factor / w), grid[1] * factor - 1)
    return (r // factor) * grid[1] + c // factor, (r % factor) * factor + c % factor


def _tiles(view: Tensor, grid: Grid, factor: int) -> Tensor:
    """[3, R*f*th, C*f*tw] -> [R*C*f*f, 3, th, tw]: crops grouped by mid cell, raster inside each."""
    (rows, cols), f = grid, factor
    ch, th, tw = view.shape[0], view.shape[1] // (rows * f), view.shape[2] // (cols * f)
    t = view.view(ch, rows, f, th, cols, f, tw).permute(1, 4, 2, 5, 0, 3, 6)  # [R, C, f, f, 3, th, tw]
    return t.reshape(rows * cols * f * f, ch, th, tw)


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1}  # PIL.Image.Resampling values


class ZoomPreprocess:
    """PIL image -> [1 + M + M*f*f, 3, Sh, Sw] (low, mid, high crops), each crop resized with the
    encoder's interpolation and normalised with its mean / std, like the encoder's own preprocess."""

    crop = False  # squash, never centre-crop: `vlm.data.decode.draft_size_of` reads these two

    def __init__(self, base: Any, settings: ZoomSettings):
        self.tile: tuple[int, int] = tuple(base.size)  # (h, w)
        self.mean = torch.tensor(base.mean).view(-1, 1, 1)
        self.std = torch.tensor(base.std).view(-1, 1, 1)
        self.interpolation = base.interpolation
        self.settings = settings
        f = settings.factor
        # The largest view any grid option needs: JPEG draft decoding stays at or above it.
        self.size = (max(r for r, _ in settings.mid_grids) * f * self.tile[0],
                     max(c for _, c in settings.mid_grids) * f * self.tile[1])

    def grid(self, image) -> Grid:
        return choose_grid(image.size, self.settings.mid_grids, self.tile)

    def _view(self, image, grid: Grid, factor: int) -> Tensor:
        """The whole image squashed to grid*factor crops. uint8 [3, R*f*th, C*f*tw]"""
        from torchvision.transforms.functional import pil_to_tensor
        w, h = grid[1] * factor * self.tile[1], grid[0] * factor * self.tile[0]
        # reducing_gap 3: a box reduce first, then the filter (PIL: indistinguishable from a full resample)
        return pil_to_tensor(image.resize((w, h), _RESAMPLE[self.interpolation], reducing_gap=3.0))

    def focus(self, size: tuple[int, int], box: Box) -> int:
        """The high crop (mid crop index * factor^2 + slot) holding the centre of `box` (left, top, right,
        bottom) in an image of `size` (w, h): the crop a question about that box should zoom into."""
        grid, f = choose_grid(size, self.settings.mid_grids, self.tile), self.settings.factor
        mid, slot = locate(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), size, grid, f)
        return mid * f * f + slot

    def __call__(self, image) -> Tensor:
        image = as_pil(image)
        grid, f = self.grid(image), self.settings.factor
        x = torch.cat([self._view(image, (1, 1), 1)[None],                     # [1, 3, Sh, Sw]
                       _tiles(self._view(image, grid, 1), grid, 1),             # [M, 3, Sh, Sw]
                       _tiles(self._view(image, grid, f), grid, f)])            # [M*f*f, 3, Sh, Sw]
        return x.float().div_(255).sub_(self.mean).div_(self.std)              # uint8 -> normalised, one pass

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "zoom", "tile": list(self.tile), "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "interpolation": self.interpolation, **self.settings.to_dict()}

    def __repr__(self) -> str:
        return f"ZoomPreprocess(tile={self.tile}, {self.settings})"


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------
def zoom_scores(high: Tensor, query: Tensor) -> Tensor:
    """Dot product of each high crop's mean token with its region's query.
    high [N, M, F, t, D], query [N, M, D] -> [N, M, F]"""
    return torch.einsum("nmfd,nmd->nmf", high.mean(3), query.to(high.dtype))


def salient_scores(high: Tensor) -> Tensor:
    """Distance of each high crop's mean token from the mean of its region's high crops: the crops that
    differ from their surroundings (a small object on a plain background) score highest.
    high [N, M, F, t, D] -> [N, M, F]"""
    crop = high.mean(3)                                                          # [N, M, F, D]
    return (crop - crop.mean(2, keepdim=True)).norm(dim=-1)


def select_top_k(scores: Tensor, k: int) -> Tensor:
    """The k best crops per region, in position order. [N, M, F] -> [N, M, k]"""
    return scores.topk(k, dim=-1).indices.sort(-1).values


class ZoomSelect(nn.Module):
    """The learned part of the zoom (a separator per level: after mid crops, after high crops; the text
    score's query / key maps) and the assembly of one image's tokens: low, mid crops + sep, top-k high
    crops per mid region + sep."""

    def __init__(self, settings: ZoomSettings, d_lm: int):
        super().__init__()
        self.settings = settings
        self.separator = nn.Parameter(torch.randn(2, d_lm) * 0.02) if settings.separator else None  # [2, D_lm]
        if settings.selection == "text":                 # identity at init: the plain dot product
            self.query, self.key = nn.Linear(d_lm, d_lm), nn.Linear(d_lm, d_lm)
            for lin in (self.query, self.key):
                nn.init.eye_(lin.weight)
                nn.init.zeros_(lin.bias)

    def scores(self, mid: Tensor, high: Tensor, query: Tensor | None = None) -> Tensor:
        """Each high crop's score within its region. mid [N, M, t, D], high [N, M, F, t, D], query [N, M, D]
        (None: each region's mid crop mean) -> [N, M, F]"""
        if self.settings.selection == "salient":
            return salient_scores(high)
        query = mid.mean(2) if query is None else query
        if self.settings.selection == "visual":
            return zoom_scores(high, query)
        q, k = self.query(query.to(high.dtype)), self.key(high.mean(3))          # [N, M, D], [N, M, F, D]
        return torch.einsum("nmfd,nmd->nmf", k, q) / math.sqrt(q.shape[-1])

    def forward(self, low: Tensor, mid: Tensor, high: Tensor,
                query: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """low [N, T, D], mid [N, M, t, D], high [N, M, F, t, D]; query [N, M, D] (None: each region's
        mid crop mean, the reference's visual score; unused when salient) -> tokens [N, budget, D],
        picked [N, M, k], scores [N, M, F]."""
        N, M, _, t, D = high.shape
        scores = self.scores(mid, high, query)                                    # [N, M, F]
        picked = select_top_k(scores, self.settings.top_k)                       # [N, M, k]
        k = picked.shape[-1]
        kept = high.gather(2, picked[..., None, None].expand(N, M, k, t, D))      # [N, M, k, t, D]
        if self.settings.selection == "text" and torch.is_grad_enabled():
            p = scores.float().softmax(-1).gather(2, picked)                      # [N, M, k]
            kept = kept * (1 + p - p.detach()).to(kept.dtype)[..., None, None]    # == kept; d/dscores flows
        if self.separator is not None:
            sep = self.separator.to(mid.dtype)
            mid = torch.cat([mid, sep[0].expand(N, M, 1, D)], 2)                  # [N, M, t+1, D]
            kept = torch.cat([kept, sep[1].expand(N, M, k, 1, D)], 3)             # [N, M, k, t+1, D]
        return torch.cat([low, mid.flatten(1, 2), kept.flatten(1, 3)], 1), picked, scores  # [N, budget, D]


def check_zoom_shape(shape: tuple[int, ...], settings: ZoomSettings) -> None:
    if len(shape) != 4 or shape[0] != settings.n_views:
        raise UserError(f"a dragonfly image item must be [{settings.n_views}, 3, H, W] (low, mid, high crops from "
                        f"model.processor), got {tuple(shape)}")


@dataclass(frozen=True)
class ZoomTokens(TokenCount):
    """The fixed budget: the same for every image, whatever its size (the crops are)."""
    crop: TokenCount                 # the encoder's count for one crop [3, Sh, Sw]
    settings: ZoomSettings

    def count(self, shape: tuple[int, ...]) -> int:
        check_zoom_shape(shape, self.settings)
        crop = shape[1:]
        grid = self.crop.grid(crop)
        if grid is None:
            require(self.settings.pool == 1, "the image encoder reports no patch grid: dragonfly needs pool=1 with it")
            pooled = self.crop.count(crop)
        else:
            pooled = pooled_tokens(grid, self.crop.prefix, self.settings.pool)
        return self.settings.budget(self.crop.count(crop), pooled)


@MEDIA.register("zoom")
class ZoomTokenizer(MediaTokenizer):
    """Dragonfly: low view + pooled mid crops + the top-k high crops per mid region, at a fixed budget.

    Each crop goes through the projector, a learned separator after each. Any image encoder of
    `encoders/` that reports its patch grid works (or any with pool=1)."""

    def __init__(self, modality: str, encoder: nn.Module, d_lm: int, projector: str = "mlp2x_gelu", **zoom: Any):
        require(modality == "image", f"the zoom connector takes images, not {modality}")
        super().__init__(modality, encoder)
        self.zoom_settings = ZoomSettings.from_dict(zoom, strict=True)
        self.projector = build_projector(projector, encoder.output_dim, d_lm)
        self.projector_kind = projector
        self.zoom = ZoomSelect(self.zoom_settings, d_lm)
        self._preprocess: ZoomPreprocess | None = None

    def settings(self) -> dict[str, Any]:
        return {"type": "zoom", **self.slot_settings(), "projector": self.projector_kind, **self.zoom_settings.to_dict()}

    @property
    def preprocess(self) -> ZoomPreprocess:
        if self._preprocess is None:
            self._preprocess = ZoomPreprocess(self.encoder.preprocess, self.zoom_settings)
        return self._preprocess

    def token_count(self) -> ZoomTokens:
        return ZoomTokens(self.encoder.token_count(), self.zoom_settings)

    def forward(self, items: list[Tensor], context: MediaContext | None = None) -> list[Tensor]:
        return list(self.zoom_tokens(items, context)[0].unbind(0))                # N x [budget, D_lm]

    def zoom_tokens(self, items: list[Tensor], context: MediaContext | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Preprocessed items -> (tokens [N, budget, D_lm], picked high crops per mid region [N, M, k], every
        high crop's score [N, M, F])."""
        s, enc, proj = self.zoom_settings, self.encoder, self.projector
        for it in items:
            check_zoom_shape(tuple(it.shape), s)
        x = torch.stack(items)                                                    # [N, V, 3, S, S]
        N, V, M = x.shape[0], x.shape[1], s.n_mid
        feats = torch.stack(enc.encode(list(x.flatten(0, 1))))                    # [N*V, T, D_enc]
        feats = feats.unflatten(0, (N, V))                                        # [N, V, T, D_enc]
        low = proj(feats[:, 0])                                                   # [N, T, D_lm]
        grid = enc.patch_grid(items[0][0])
        crops = feats[:, 1:].flatten(0, 1)                                        # [N*(V-1), T, D_enc]
        if grid is not None:
            crops = pool_grid(crops, grid, enc.num_prefix_tokens, s.pool)         # [N*(V-1), t, D_enc]
        crops = proj(crops).unflatten(0, (N, V - 1))                              # [N, V-1, t, D_lm]
        mid, high = crops[:, :M], crops[:, M:].unflatten(1, (M, s.factor ** 2))   # [N, M, t, D], [N, M, F, t, D]
        return self.zoom(low, mid, high, self._text_query(mid, context))

    def _text_query(self, mid: Tensor, context: MediaContext | None) -> Tensor | None:
        """Text selection: each item's prompt mean embedding (its sample's, in a packed row), per mid region
        [N, M, D]; None (visual) otherwise. A sample with no prompt tokens (or no context: a blank item) falls
        back to the visual query."""
        if self.zoom_settings.selection != "text" or context is None:
            return None
        visual = mid.mean(2)                                                      # [N, M, D]
        q = torch.stack([context.prompt_mean(i) for i in range(len(context.rows))]).to(visual.dtype)  # [N, D]
        q = q[:, None].expand_as(visual)
        return torch.where(q.isfinite().all(-1, keepdim=True), q, visual)

"""Hooks of the synthetic-world sound / music / video lmms-eval tasks (loaded by path from the YAMLs).
The data files are module attributes computed on first access (PEP 562), so building one task exports only
its own benchmarks: VQA_FILES / CAPTION_FILES (every modality, pooled) and VQA_FILES_<M> / CAPTION_FILES_<M>
(M = AUDIO, MUSIC, VIDEO, TRAILER: one modality's)."""
from benchmarks.lmms_tasks.export import AV_BY_MODALITY, AV_CAPTIONS, AV_VQA, data_files
from benchmarks.lmms_tasks.export import (  # noqa: F401
    bleu_agg,
    cider_agg,
    doc_to_text,
    doc_to_visual,
    process_captions,
    process_results,
    rouge_agg,
)


def __getattr__(name: str) -> dict[str, str]:
    kind, _, modality = name.partition("_FILES")
    if kind in ("VQA", "CAPTION") and (not modality or modality[1:].lower() in AV_BY_MODALITY):
        if modality:
            vqa, captions = AV_BY_MODALITY[modality[1:].lower()]
        else:
            vqa, captions = AV_VQA, AV_CAPTIONS
        return data_files(tuple(vqa if kind == "VQA" else captions))
    raise AttributeError(name)

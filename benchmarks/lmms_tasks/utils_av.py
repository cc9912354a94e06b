"""Hooks of the synthetic-world sound / music / video lmms-eval tasks (loaded by path from the YAMLs).
Each data file is computed only when lmms-eval builds its task (it imports this module then)."""
from benchmarks.lmms_tasks.export import AV_CAPTIONS, AV_VQA, data_files
from benchmarks.lmms_tasks.export import (  # noqa: F401
    bleu_agg,
    cider_agg,
    doc_to_text,
    doc_to_visual,
    process_captions,
    process_results,
    rouge_agg,
)

VQA_FILES = data_files(tuple(AV_VQA))
CAPTION_FILES = data_files(tuple(AV_CAPTIONS))

"""Hooks of the synthetic-world text-only lmms-eval task (loaded by path from its YAML). The data file is
computed only when lmms-eval builds the task (it imports this module then)."""
from benchmarks.lmms_tasks.export import (  # noqa: F401
    TEXT_QA,
    data_files,
    doc_to_text,
    doc_to_visual,
    process_results,
)

TEXT_FILES = data_files(tuple(TEXT_QA))

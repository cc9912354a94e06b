"""Hooks of the synthetic-world lmms-eval tasks (lmms-eval loads this file by path from the YAMLs)."""
from benchmarks.lmms_tasks.export import data_files as _data_files
from benchmarks.lmms_tasks.export import doc_to_choice, doc_to_text, doc_to_visual, process_results  # noqa: F401

# A value, not a function: the YAMLs read it as `dataset_kwargs.data_files`. Computed only when
# lmms-eval builds one of these tasks (its task index reads YAMLs without running `!function`).
DATA_FILES = _data_files()

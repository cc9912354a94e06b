"""Local lmms-eval tasks over synthetic-world (`--include_path benchmarks/lmms_tasks`); see export.py."""

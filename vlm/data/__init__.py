"""Data: sample schema, chat templates, shard writing and reading, collation and packing."""

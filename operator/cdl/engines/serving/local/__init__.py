"""The local serving engine's parts (being moved here from engines/local/serving)."""

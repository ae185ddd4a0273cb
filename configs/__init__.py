"""Experiment configs: one file per experiment, each exposing `get_config(arg)` (big_vision style)."""

"""attrflow's library: plain Python, no orchestration, importable from a notebook."""

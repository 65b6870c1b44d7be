"""attrflow's Feast repo: feature_store.yaml (one machine; variants/ for a shared deployment),
products.py (the entity and the feature views) and store.py (opening the store from attrflow)."""

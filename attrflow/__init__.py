"""attrflow's command line; the library lives in `components`, the Prefect flows in `flows`."""

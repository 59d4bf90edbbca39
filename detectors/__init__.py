"""Pure computation: embedders, drift, OOD and the judge's verdict logic (no I/O here)."""

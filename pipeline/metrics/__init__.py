"""FID, sFID, IS, KID, precision/recall and fidelity metrics from one feature pass."""

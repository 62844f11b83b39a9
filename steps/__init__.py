"""One operation per module; each exposes a params model, plan() and apply()."""

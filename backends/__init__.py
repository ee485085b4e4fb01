"""Storage backends: they move opaque (already sealed) bytes and never see keys."""

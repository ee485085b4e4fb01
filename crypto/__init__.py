"""Format, key hierarchy and key providers. No storage I/O happens here."""

"""Data pipeline: dataset adapters, downloads, decoding, frame store, loaders (DESIGN.md "Data")."""

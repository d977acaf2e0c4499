"""RaP: redundancy-aware video-language pre-training."""

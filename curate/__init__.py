"""curate: messy image collections in, clean versioned training shards (and a classifier) out."""

__version__ = "0.1.0"

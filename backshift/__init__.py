"""backshift: a deduplicating backup program that restores through tar."""

__version__ = "0.1.0"

"""campushub: one trustworthy data layer over a university's separate systems."""

__version__ = "0.1.0"

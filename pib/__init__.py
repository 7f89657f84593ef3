"""pib: build platform images from many components, never rebuilding what has not changed."""

__version__ = "0.1.0"

"""emofuse: speech emotion recognition from acoustics and words."""

__version__ = "0.1.0"

"""nasfe: network architecture search for face enhancement (blur, noise and low light at once)."""

__version__ = "0.1.0"

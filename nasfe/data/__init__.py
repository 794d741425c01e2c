"""Faces, identities, splits and training batches (see docs/DATA.md).

A package face only: import from its modules (``nasfe.data.batches``, ``nasfe.data.faces`` ...), so
that reading one module (e.g. ``nasfe.data.remote`` from the image reader) loads no other."""

"""One module per pipeline step; each declares the artifacts it writes (``ARTIFACTS``) so the
pipeline, the docs and the tests agree on what a step leaves behind."""

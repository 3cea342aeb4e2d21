"""Tests of the call pipeline's stages, each bound on its own around test handlers."""

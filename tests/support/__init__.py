"""Test helpers shared across test files (fakes, scripted servers)."""

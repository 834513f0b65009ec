"""Threat lists: known-bad domains and URLs, each list a category (see the README)."""

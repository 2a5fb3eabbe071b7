"""Peer pipelines the end-to-end benchmark compares ours with (issue 7)."""

"""Judging and statistics, shared by training (validation) and evaluation: did an answer refuse,
does it repeat itself, and how sure is a measured rate."""

"""Analyse: metrics over records, tidy frames, memory tables and plots."""

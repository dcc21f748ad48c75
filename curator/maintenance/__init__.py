"""Keeping scores true and tables healthy: stats, refresh (and reference scoring),
verify, optimize."""

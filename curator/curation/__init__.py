"""Curation decisions written as columns: concept clusters, near duplicates, rebalancing."""

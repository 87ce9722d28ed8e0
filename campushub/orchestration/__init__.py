"""Dagster: resources, assets per source and layer, checks, automation and `Definitions`."""

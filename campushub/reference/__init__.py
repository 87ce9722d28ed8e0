"""Reference data every layer may read: national code tables, identity-number rules and what a
source office promises about its records.

This package sits below everything else (simulators, connectors and the unified layer all use
it) and imports nothing from campushub, so the one-way flow of data is never bent by it.
"""

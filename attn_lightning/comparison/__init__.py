"""Comparing runs and sweeps: arms, the protocol, statistics, tables and plots."""

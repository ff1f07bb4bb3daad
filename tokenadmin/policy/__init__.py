"""Allocation policies: floor, ceiling, auto-increase, reclamation and temporary boosts."""

"""Example spaces shipped with spacegrid."""

"""Reusable test pieces of the backbone: the storage contracts every implementation runs."""

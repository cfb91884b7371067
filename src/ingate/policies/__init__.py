"""Policies that ship with ingate."""

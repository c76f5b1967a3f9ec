"""Gamma policies: how many tokens to draft each step (fixed, per request, per batch)."""

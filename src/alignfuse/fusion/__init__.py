"""Fusion modules (planned: see the README feature table). The registry family exists so
fusion plugs in without touching the engine."""

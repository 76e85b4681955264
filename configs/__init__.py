"""The default configs and prompts of every stage, shipped as package data (`mmw2s.configs`).

This folder holds YAML and text files, not code; it is a package only so that an installed wheel
carries it (see `mmw2s.resources`).
"""

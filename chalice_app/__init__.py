"""The control plane as Chalice deploys it: ``app.py`` (routes and event handlers) and ``chalicelib/``.

Installed with the project so that ``from chalice_app import app`` works anywhere; on Lambda, Chalice
imports ``app`` and ``chalicelib`` as top-level modules, and this file is not part of the package.
"""

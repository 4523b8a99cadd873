"""The local API Gateway (HTTP API, payload format 2.0): `python -m scripts.dev.localgw` (server.py)."""

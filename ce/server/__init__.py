"""The step server: HTTPS API with mutual TLS and a bearer token, driven by the connector (see serve.py)."""

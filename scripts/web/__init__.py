"""The web app's files: how each file of web/ is served, locally and deployed (assets), `make web-vendor`
(vendor) and `make publish-web` (publish)."""

"""How HTTP is answered: the request parsed once, the core's outcome rendered, CORS, gzip,
statuses and telemetry. The only package that imports flask or werkzeug."""

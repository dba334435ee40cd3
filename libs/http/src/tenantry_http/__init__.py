"""The HTTP edge: problem+json errors, the input guard, authentication, idempotency,
pagination, the request pipeline's steps and the HTTP server."""

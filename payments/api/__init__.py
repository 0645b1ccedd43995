"""The REST API (Django REST framework): thin views over the command service and the
read models, one exception handler, Idempotency-Key, and the OpenAPI schema."""

"""The HTTP side: middlewares, pages, the JSON and FHIR APIs, operations endpoints."""

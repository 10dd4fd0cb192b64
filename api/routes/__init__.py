"""HTTP routes. Each handler parses the request, calls a service and shapes the response."""

"""Service layer: the work behind the routes, also called by the worker and the CLI."""

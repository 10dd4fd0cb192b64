"""HTTP service for SDFT: settings, database, object storage, routes and service commands."""

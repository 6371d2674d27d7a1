"""HTTP routers only: each handler parses input, calls app.services, renders or returns JSON."""

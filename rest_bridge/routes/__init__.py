"""HTTP routes, one module per endpoint family; each parses, translates, calls the worker, answers."""

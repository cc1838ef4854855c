"""The HTTP API on the API port (aiohttp): thin handlers over the analyzer's incidents, paging and
containment, and the collector's store. ``server`` builds the app and checks tokens; one module
per resource."""

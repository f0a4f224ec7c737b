"""Long-running services: change-feed followers; later the storage SCP, worklist server, web app."""

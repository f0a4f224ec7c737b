"""Long-running services: change-feed followers, the storage SCP; later the worklist server and web app."""

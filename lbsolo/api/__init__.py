"""The layers above the core that answer requests: REST API, ops, git push, web UI, and their auth."""

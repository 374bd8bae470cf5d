"""The FastAPI app: REST surface of design.md section 4. Build it with `create_app(settings)`."""

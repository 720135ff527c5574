"""The FastAPI service that serves textrnn model folders over HTTP."""

"""The tutorial's service (docs/tutorial.md): a show-booking API on FastAPI + PostgreSQL, then on spacegrid."""

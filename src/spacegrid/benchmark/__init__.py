"""`spacegrid bench`: the ticket workload against the grid, PostgreSQL and Redis in one run, checked and reported."""

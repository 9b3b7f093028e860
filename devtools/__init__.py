"""Local tooling (never deployed): embedded PostgreSQL, seeding, the capacity planner."""

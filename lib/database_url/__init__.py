"""`DATABASE_URL`, read with libpq's meaning, and connecting through it."""

"""How the function reaches PostgreSQL: the driver behind one boundary, the pooled database
and its sessions, what a failure means, the connection budget and statement cancels."""

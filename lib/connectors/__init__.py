"""Google's connector paths (Cloud SQL, AlloyDB): bounded, gated, replica-aware, IAM login."""

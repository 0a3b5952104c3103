"""What runs inside a container (and, at registration, inside the version's environment)."""

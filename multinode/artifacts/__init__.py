"""Registration-time build steps: the artifacts a version runs from, built beside (not inside) the
provisioner backends that run them. ``local`` (stored versions and their environments, for the local
backend), ``image`` (the build context of a version's container image) and ``fargate_image`` (build
and push it, for Fargate)."""

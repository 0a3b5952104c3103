# The function containers' secret: a JSON object of their secret variables (the Temporal connection,
# encryption keys; `mn container-secret` prints it). Task definitions map it into MULTINODE_SECRETS,
# which ECS fetches with the task execution role, so no credential travels in RunTask overrides.
# Secrets Manager names are regional, so PREFIX/... does not collide across regions.

resource "aws_secretsmanager_secret" "containers" {
  name                    = "${var.name_prefix}/container-secrets"
  description             = "Secret variables of Multinode function containers (JSON, from `mn container-secret`)."
  recovery_window_in_days = var.container_secret_recovery_days
}

# Only when container_secrets is set: the value then also sits in the Terraform state.
resource "aws_secretsmanager_secret_version" "containers" {
  count         = nonsensitive(var.container_secrets != null) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.containers.id
  secret_string = var.container_secrets
}

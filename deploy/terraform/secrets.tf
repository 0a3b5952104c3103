# The function containers' secret: a JSON object of their secret variables (the Temporal connection,
# encryption keys; `mn container-secret` prints it). Task definitions map it into MULTINODE_SECRETS,
# which ECS fetches with the task execution role, so no credential travels in RunTask overrides.
# Secrets Manager names are regional, so PREFIX/... does not collide across regions.

resource "aws_secretsmanager_secret" "containers" {
  name                    = "${var.name_prefix}/container-secrets"
  description             = "Secret variables of Multinode function containers (JSON, from `mn container-secret`)."
  recovery_window_in_days = var.container_secret_recovery_days
}

# With container_secrets set, its value (which then also sits in the Terraform state).
resource "aws_secretsmanager_secret_version" "containers" {
  count         = nonsensitive(var.container_secrets != null) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.containers.id
  secret_string = var.container_secrets
}

# Otherwise "{}" to begin with: ECS cannot start a task whose secret has no value, and "{}" lets
# containers connect with the public settings of their overrides, which is all a Temporal without
# credentials needs. Put the real value with `mn container-secret | aws secretsmanager put-secret-value`;
# later applies leave it alone.
resource "aws_secretsmanager_secret_version" "containers_initial" {
  count         = nonsensitive(var.container_secrets == null) ? 1 : 0
  secret_id     = aws_secretsmanager_secret.containers.id
  secret_string = "{}"

  lifecycle {
    ignore_changes = [secret_string]
  }
}

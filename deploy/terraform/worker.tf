# Optional: the control-plane worker itself as an ECS service on Fargate (set worker_image).
# It runs `mn worker` with worker_environment, the extra variables and the secrets you pass, in the same
# subnets and security group as the function containers.

locals {
  run_worker = var.worker_image != null

  worker_secret_arns = [for arn in values(var.worker_secrets) : arn]
  # A Secrets Manager reference may name a JSON key after the secret's ARN (arn:...:secret:NAME:KEY::);
  # IAM wants the secret's own ARN (its first 7 colon-separated fields).
  worker_secretsmanager_arns = distinct([
    for arn in local.worker_secret_arns : join(":", slice(split(":", arn), 0, 7)) if can(regex("^arn:[^:]+:secretsmanager:", arn))
  ])
  worker_ssm_arns = distinct([for arn in local.worker_secret_arns : arn if can(regex("^arn:[^:]+:ssm:", arn))])

  worker_container_environment = merge(
    local.worker_environment,
    { AWS_REGION = var.region, MULTINODE_WORKER_HEALTH_PORT = tostring(local.worker_health_port) },
    var.worker_extra_environment,
  )
  # `mn worker` serves /healthz on this port (loopback only); the container's health check asks it.
  worker_health_port = 8079
}

resource "aws_cloudwatch_log_group" "worker" {
  count             = local.run_worker ? 1 : 0
  name              = "/${var.name_prefix}/worker"
  retention_in_days = var.log_retention_days
}

resource "aws_iam_role" "worker_execution" {
  count              = local.run_worker ? 1 : 0
  name               = "${local.iam_prefix}-worker-execution"
  description        = "ECS pulls the Multinode worker image, writes its logs and reads its secrets with this role."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "worker_execution" {
  count = local.run_worker ? 1 : 0

  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "EcrPullWorkerImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.worker.arn]
  }

  statement {
    sid       = "WriteWorkerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.worker[0].arn}:log-stream:*"]
  }

  dynamic "statement" {
    for_each = length(local.worker_secretsmanager_arns) > 0 ? [1] : []
    content {
      sid       = "ReadWorkerSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.worker_secretsmanager_arns
    }
  }

  dynamic "statement" {
    for_each = length(local.worker_ssm_arns) > 0 ? [1] : []
    content {
      sid       = "ReadWorkerParameters"
      actions   = ["ssm:GetParameters"]
      resources = local.worker_ssm_arns
    }
  }
}

resource "aws_iam_role_policy" "worker_execution" {
  count  = local.run_worker ? 1 : 0
  name   = "pull-image-write-logs-read-secrets"
  role   = aws_iam_role.worker_execution[0].id
  policy = data.aws_iam_policy_document.worker_execution[0].json
}

resource "aws_ecs_task_definition" "worker" {
  count                    = local.run_worker ? 1 : 0
  family                   = "${var.name_prefix}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.worker_cpu
  memory                   = var.worker_memory
  execution_role_arn       = aws_iam_role.worker_execution[0].arn
  task_role_arn            = aws_iam_role.worker.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.worker_cpu_architecture
  }

  container_definitions = jsonencode([
    {
      name        = "worker"
      image       = var.worker_image
      essential   = true
      command     = ["mn", "worker"]
      stopTimeout = 60
      environment = [for name, value in local.worker_container_environment : { name = name, value = value }]
      secrets     = [for name, arn in var.worker_secrets : { name = name, valueFrom = arn }]
      # ECS replaces a worker that stops answering (exit 1 of the health module: no 200 from /healthz).
      healthCheck = {
        command     = ["CMD", "python", "-m", "multinode.control_plane.health"]
        interval    = 30
        timeout     = 10
        retries     = 3
        startPeriod = 60
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.worker[0].name
          awslogs-region        = var.region
          awslogs-stream-prefix = "worker"
        }
      }
    }
  ])
}

resource "aws_ecs_service" "worker" {
  count           = local.run_worker ? 1 : 0
  name            = "${var.name_prefix}-worker"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker[0].arn
  desired_count   = var.worker_desired_count
  launch_type     = "FARGATE"
  propagate_tags  = "SERVICE"

  # Workers share one task queue, so a new one may start before the old one stops.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  network_configuration {
    subnets          = local.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = local.assign_public_ip
  }

  depends_on = [aws_iam_role_policy.worker_execution, aws_iam_role_policy_attachment.worker]
}

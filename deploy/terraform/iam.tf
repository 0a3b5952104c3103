# Identities:
#   task execution role  - used by ECS itself to pull the function image, write its logs and read the
#                          container secret;
#   task role            - the AWS identity of user code in function containers (nothing by default);
#   worker policy/role   - exactly the calls the control-plane worker (`mn worker`) makes to run
#                          function containers (no ECR: it pushes no image);
#   register policy      - what `mn register --provisioner fargate` needs to check and push a version's
#                          image (for the people or the CI that register).
# IAM names are PREFIX-REGION-*: IAM is account-wide, everything else here is regional.

locals {
  ecs_trust_conditions = [
    { test = "StringEquals", variable = "aws:SourceAccount", values = [local.account_id] },
    { test = "ArnLike", variable = "aws:SourceArn", values = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:*"] },
  ]
}

data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    sid     = "EcsTasksAssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    dynamic "condition" {
      for_each = local.ecs_trust_conditions
      content {
        test     = condition.value.test
        variable = condition.value.variable
        values   = condition.value.values
      }
    }
  }
}

# --- task execution role ------------------------------------------------------------------------------

resource "aws_iam_role" "task_execution" {
  name               = "${local.iam_prefix}-task-execution"
  description        = "ECS pulls Multinode function images, writes their logs and reads their secret with this role."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "task_execution" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }

  statement {
    sid       = "EcrPullFunctionImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.functions.arn]
  }

  statement {
    sid       = "WriteFunctionLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.functions.arn}:log-stream:*"]
  }

  # Task definitions map the container secret into MULTINODE_SECRETS; ECS reads it with this role.
  statement {
    sid       = "ReadContainerSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.containers.arn]
  }
}

resource "aws_iam_role_policy" "task_execution" {
  name   = "pull-images-write-logs-read-secret"
  role   = aws_iam_role.task_execution.id
  policy = data.aws_iam_policy_document.task_execution.json
}

# --- task role of function containers -------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${local.iam_prefix}-function-task"
  description        = "AWS identity of user code in Multinode function containers; no permissions unless you attach some."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy_attachment" "task" {
  count      = length(var.task_role_policy_arns)
  role       = aws_iam_role.task.name
  policy_arn = var.task_role_policy_arns[count.index]
}

resource "aws_iam_role_policy" "task" {
  count  = var.task_role_inline_policy == null ? 0 : 1
  name   = "user-code"
  role   = aws_iam_role.task.id
  policy = var.task_role_inline_policy
}

# --- control-plane worker -----------------------------------------------------------------------------

locals {
  ecs_arn_prefix = "arn:${local.partition}:ecs:${var.region}:${local.account_id}"
  # Multinode's task-definition families (MULTINODE_TASK_FAMILY_PREFIX-fn-HASH), any revision.
  function_task_definitions = "${local.ecs_arn_prefix}:task-definition/${var.name_prefix}-fn-*"
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "RunFunctionTasksInTheCluster"
    actions   = ["ecs:RunTask"]
    resources = [local.function_task_definitions]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "WatchAndStopTasksInTheCluster"
    actions   = ["ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid = "RegisterTaskDefinitions"
    # RegisterTaskDefinition and DescribeTaskDefinition have no resource-level permissions.
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }

  # Tags go on tasks and task definitions as RunTask and RegisterTaskDefinition create them, never
  # on existing resources.
  statement {
    sid     = "TagOnCreate"
    actions = ["ecs:TagResource"]
    resources = [
      "${local.ecs_arn_prefix}:task/${aws_ecs_cluster.this.name}/*",
      local.function_task_definitions,
    ]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask", "RegisterTaskDefinition"]
    }
  }

  statement {
    sid       = "PassFunctionRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task_execution.arn, aws_iam_role.task.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "ReadFunctionLogs"
    actions   = ["logs:GetLogEvents"]
    resources = ["${aws_cloudwatch_log_group.functions.arn}:log-stream:*"]
  }
}

resource "aws_iam_policy" "worker" {
  name        = "${local.iam_prefix}-worker"
  description = "What the Multinode control-plane worker calls: run ${var.name_prefix}-fn-* task definitions in the ${var.name_prefix} cluster, pass their two roles, read their logs."
  policy      = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role" "worker" {
  name               = "${local.iam_prefix}-worker"
  description        = "Task role of the Multinode control-plane worker when it runs on ECS."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy_attachment" "worker" {
  role       = aws_iam_role.worker.name
  policy_arn = aws_iam_policy.worker.arn
}

# --- registration (people or CI running `mn register --provisioner fargate`) ---------------------------

data "aws_iam_policy_document" "register" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "CheckAndPushFunctionImages"
    actions = [
      # Resolve a tag to its digest, check that an --image exists, skip a push the repository has.
      "ecr:DescribeImages",
      "ecr:BatchGetImage",
      # docker push
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
    ]
    resources = [aws_ecr_repository.functions.arn]
  }
}

resource "aws_iam_policy" "register" {
  name        = "${local.iam_prefix}-register"
  description = "Check and push Multinode function images in ${aws_ecr_repository.functions.name} (mn register --provisioner fargate)."
  policy      = data.aws_iam_policy_document.register.json
}

# Identities:
#   task execution role  - used by ECS itself to pull the function image and write its logs;
#   task role            - the AWS identity of user code in function containers (nothing by default);
#   worker policy/role   - what the control-plane worker (`mn worker`) needs to run function containers;
#   register policy      - what `mn register --provisioner fargate` needs to push a version's image
#                          (for the people or the CI that register; the worker policy includes it).

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
  name               = "${var.name_prefix}-task-execution"
  description        = "ECS pulls Multinode function images and writes their logs with this role."
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
}

resource "aws_iam_role_policy" "task_execution" {
  name   = "pull-images-write-logs"
  role   = aws_iam_role.task_execution.id
  policy = data.aws_iam_policy_document.task_execution.json
}

# --- task role of function containers -------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name_prefix}-function-task"
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

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "RunFunctionTasksInTheCluster"
    actions   = ["ecs:RunTask", "ecs:StopTask", "ecs:DescribeTasks", "ecs:ListTasks"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid = "ManageTaskDefinitions"
    # Task definitions have no resource-level permissions for registration.
    actions   = ["ecs:RegisterTaskDefinition", "ecs:DeregisterTaskDefinition", "ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions"]
    resources = ["*"]
  }

  statement {
    sid     = "TagTasksAndTaskDefinitions"
    actions = ["ecs:TagResource", "ecs:ListTagsForResource"]
    resources = [
      "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*",
      "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task-definition/*",
    ]
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
    actions   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.functions.arn, "${aws_cloudwatch_log_group.functions.arn}:log-stream:*"]
  }

  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushAndReadFunctionImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:DescribeRepositories",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.functions.arn]
  }
}

resource "aws_iam_policy" "worker" {
  name        = "${var.name_prefix}-worker"
  description = "What the Multinode control-plane worker needs: run function tasks in the ${var.name_prefix} cluster, pass their two roles, read their logs, push function images."
  policy      = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role" "worker" {
  name               = "${var.name_prefix}-worker"
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
    sid = "PushFunctionImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:GetDownloadUrlForLayer",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.functions.arn]
  }
}

resource "aws_iam_policy" "register" {
  name        = "${var.name_prefix}-register"
  description = "Push Multinode function images to ${aws_ecr_repository.functions.name} (mn register --provisioner fargate)."
  policy      = data.aws_iam_policy_document.register.json
}

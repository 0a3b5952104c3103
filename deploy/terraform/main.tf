# Multinode on AWS: one ECS Fargate task per execution of a task function.
#
# The control-plane worker (`mn worker`, MULTINODE_PROVISIONER=fargate) registers task definitions
# and runs tasks in this cluster, with the function image from the functions ECR repository, the
# task execution role (image pull, log writes), the task role (what user code may do in AWS), the
# subnets and the security group below; the containers log to the functions log group.

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  account_id = data.aws_caller_identity.current.account_id

  # IAM names are account-wide (unlike everything else here, which is regional): the region in them
  # lets the same name_prefix be applied in several regions of one account. The variables' validations
  # keep the longest role name, PREFIX-REGION-worker-execution, within IAM's 64 characters (29+1+16+17).
  iam_prefix = "${var.name_prefix}-${var.region}"

  private          = var.create_vpc && var.private_subnets
  vpc_id           = var.create_vpc ? aws_vpc.this[0].id : var.vpc_id
  subnet_ids       = !var.create_vpc ? var.subnet_ids : local.private ? aws_subnet.private[*].id : aws_subnet.public[*].id
  assign_public_ip = var.assign_public_ip != null ? var.assign_public_ip : var.create_vpc && !local.private

  # The environment of `mn worker` (the Fargate provisioner's settings).
  worker_environment = merge(
    {
      MULTINODE_PROVISIONER             = "fargate"
      MULTINODE_AWS_REGION              = var.region
      MULTINODE_ECS_CLUSTER             = aws_ecs_cluster.this.name
      MULTINODE_SUBNETS                 = join(",", local.subnet_ids)
      MULTINODE_SECURITY_GROUPS         = aws_security_group.tasks.id
      MULTINODE_ASSIGN_PUBLIC_IP        = local.assign_public_ip ? "true" : "false"
      MULTINODE_TASK_EXECUTION_ROLE_ARN = aws_iam_role.task_execution.arn
      MULTINODE_TASK_ROLE_ARN           = aws_iam_role.task.arn
      MULTINODE_LOG_GROUP               = aws_cloudwatch_log_group.functions.name
      MULTINODE_ECR_REPOSITORY          = aws_ecr_repository.functions.repository_url
      MULTINODE_CONTAINER_SECRET_ARN    = aws_secretsmanager_secret.containers.arn
      MULTINODE_TASK_FAMILY_PREFIX      = var.name_prefix
      MULTINODE_FARGATE_SPOT            = var.fargate_spot
      MULTINODE_TASK_QUEUE              = var.task_queue
    },
    var.temporal_address == null ? {} : { TEMPORAL_ADDRESS = var.temporal_address },
    var.temporal_namespace == null ? {} : { TEMPORAL_NAMESPACE = var.temporal_namespace },
  )
}

# --- security group of the function containers ------------------------------------------------------

resource "aws_security_group" "tasks" {
  name_prefix = "${var.name_prefix}-tasks-"
  description = "Multinode function containers: all egress (Temporal, ECR, CloudWatch Logs), no ingress."
  vpc_id      = local.vpc_id

  egress {
    description      = "All outbound traffic"
    from_port        = 0
    to_port          = 0
    protocol         = "-1"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }

  tags = { Name = "${var.name_prefix}-tasks" }

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = var.create_vpc || (var.vpc_id != null && length(var.subnet_ids) > 0)
      error_message = "Set vpc_id and subnet_ids to an existing VPC and its subnets, or set create_vpc = true."
    }

    precondition {
      condition     = var.create_vpc || !(var.private_subnets || var.nat_gateway)
      error_message = "private_subnets and nat_gateway shape the VPC that create_vpc = true creates; with your own VPC, pass its private subnets in subnet_ids (and give them a NAT gateway or VPC endpoints yourself)."
    }

    precondition {
      condition     = var.private_subnets || !var.nat_gateway
      error_message = "nat_gateway = true needs private_subnets = true (public subnets reach the internet through the internet gateway)."
    }
  }
}

# --- logs and images --------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "functions" {
  name              = "/${var.name_prefix}/functions"
  retention_in_days = var.log_retention_days
}

resource "aws_ecr_repository" "functions" {
  name                 = "${var.name_prefix}/functions"
  image_tag_mutability = var.ecr_image_tag_mutability
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = var.ecr_scan_on_push
  }
}

resource "aws_ecr_repository" "worker" {
  name                 = "${var.name_prefix}/worker"
  image_tag_mutability = var.ecr_image_tag_mutability
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = var.ecr_scan_on_push
  }
}

# ECR lifecycle: untagged images always expire; tagged ones only when asked (versions pin images by
# digest, so expiring an image breaks the versions that use it).
locals {
  expire_untagged_rule = {
    rulePriority = 1
    description  = "Delete untagged images ${var.ecr_untagged_expiry_days} days after their push"
    selection = {
      tagStatus   = "untagged"
      countType   = "sinceImagePushed"
      countUnit   = "days"
      countNumber = var.ecr_untagged_expiry_days
    }
    action = { type = "expire" }
  }
  keep_tagged_rules = var.ecr_keep_tagged_images == null ? [] : [
    {
      rulePriority = 2
      description  = "Keep the ${var.ecr_keep_tagged_images} most recent tagged images; older versions break"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.ecr_keep_tagged_images
      }
      action = { type = "expire" }
    }
  ]
}

resource "aws_ecr_lifecycle_policy" "functions" {
  repository = aws_ecr_repository.functions.name
  policy     = jsonencode({ rules = concat([local.expire_untagged_rule], local.keep_tagged_rules) })
}

resource "aws_ecr_lifecycle_policy" "worker" {
  repository = aws_ecr_repository.worker.name
  policy     = jsonencode({ rules = [local.expire_untagged_rule] })
}

# --- ECS cluster ------------------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  name = var.name_prefix

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }

  # In an account that has never used ECS, the cluster's capacity providers and services need the
  # service-linked role to exist first.
  depends_on = [aws_iam_service_linked_role.ecs]
}

resource "aws_iam_service_linked_role" "ecs" {
  count            = var.create_ecs_service_linked_role ? 1 : 0
  aws_service_name = "ecs.amazonaws.com"
  description      = "Role that ECS uses to manage the cluster's resources (created by Terraform for Multinode)."
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = var.enable_fargate_spot ? ["FARGATE", "FARGATE_SPOT"] : ["FARGATE"]

  # Functions run on FARGATE unless MULTINODE_FARGATE_SPOT (fargate_spot) sends them to FARGATE_SPOT.
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }

  lifecycle {
    precondition {
      condition     = var.fargate_spot == "off" || var.enable_fargate_spot
      error_message = "fargate_spot = \"${var.fargate_spot}\" needs the FARGATE_SPOT capacity provider: set enable_fargate_spot = true."
    }
  }
}

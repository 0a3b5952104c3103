# One output per setting of the Fargate provisioner, and all of them at once in worker_environment:
#   terraform output -json worker_environment

output "worker_environment" {
  description = "Environment of `mn worker` (MULTINODE_PROVISIONER=fargate and the provisioner's settings); add the Temporal connection (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY or TEMPORAL_TLS_*)."
  value       = local.worker_environment
}

output "provisioner" {
  description = "MULTINODE_PROVISIONER"
  value       = "fargate"
}

output "aws_region" {
  description = "MULTINODE_AWS_REGION"
  value       = var.region
}

output "ecs_cluster" {
  description = "MULTINODE_ECS_CLUSTER: name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "ecs_cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "subnets" {
  description = "MULTINODE_SUBNETS: subnet ids of the function containers, comma-separated."
  value       = join(",", local.subnet_ids)
}

output "security_groups" {
  description = "MULTINODE_SECURITY_GROUPS: security group ids of the function containers, comma-separated."
  value       = aws_security_group.tasks.id
}

output "assign_public_ip" {
  description = "MULTINODE_ASSIGN_PUBLIC_IP: true or false."
  value       = local.assign_public_ip ? "true" : "false"
}

output "task_execution_role_arn" {
  description = "MULTINODE_TASK_EXECUTION_ROLE_ARN: role ECS uses to pull function images and write their logs."
  value       = aws_iam_role.task_execution.arn
}

output "task_role_arn" {
  description = "MULTINODE_TASK_ROLE_ARN: AWS identity of user code in function containers."
  value       = aws_iam_role.task.arn
}

output "log_group" {
  description = "MULTINODE_LOG_GROUP: CloudWatch log group of the function containers."
  value       = aws_cloudwatch_log_group.functions.name
}

output "ecr_repository" {
  description = "MULTINODE_ECR_REPOSITORY: URL of the ECR repository of function images (ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME)."
  value       = aws_ecr_repository.functions.repository_url
}

output "container_secret_arn" {
  description = "MULTINODE_CONTAINER_SECRET_ARN: Secrets Manager secret of the function containers' secret variables. Put its value with: mn container-secret | aws secretsmanager put-secret-value --secret-id ARN --secret-string file:///dev/stdin"
  value       = aws_secretsmanager_secret.containers.arn
}

output "name_prefix" {
  description = "MULTINODE_TASK_FAMILY_PREFIX: task-definition families are NAME_PREFIX-fn-HASH, the ones the worker policy may run."
  value       = var.name_prefix
}

output "fargate_spot" {
  description = "MULTINODE_FARGATE_SPOT: off, retried or all."
  value       = var.fargate_spot
}

output "worker_ecr_repository" {
  description = "URL of the ECR repository for the control-plane worker image (deploy/Dockerfile.worker)."
  value       = aws_ecr_repository.worker.repository_url
}

output "vpc_id" {
  description = "VPC of the function containers."
  value       = local.vpc_id
}

output "vpc_endpoint_ids" {
  description = "VPC endpoints of the private subnets (private_subnets = true), by service: s3, and without a NAT gateway ecr.api, ecr.dkr, logs, secretsmanager (and ecs with the worker service)."
  value       = merge({ for name, endpoint in aws_vpc_endpoint.interface : name => endpoint.id }, local.private ? { s3 = aws_vpc_endpoint.s3[0].id } : {})
}

output "nat_public_ip" {
  description = "Public IP of the NAT gateway (nat_gateway = true), e.g. for an IP allowlist in front of Temporal; null otherwise."
  value       = local.private && var.nat_gateway ? aws_eip.nat[0].public_ip : null
}

output "worker_policy_arn" {
  description = "IAM policy with exactly what the control-plane worker calls; attach it to the identity that runs `mn worker`."
  value       = aws_iam_policy.worker.arn
}

output "worker_policy_json" {
  description = "The same policy as a JSON document."
  value       = data.aws_iam_policy_document.worker.json
}

output "register_policy_arn" {
  description = "IAM policy to check and push function images (ECR); attach it to the people or the CI that run `mn register --provisioner fargate`."
  value       = aws_iam_policy.register.arn
}

output "worker_role_arn" {
  description = "Role with the worker policy, assumable by ECS tasks: the task role of a worker running on ECS."
  value       = aws_iam_role.worker.arn
}

output "worker_service" {
  description = "Name of the worker's ECS service, or null when worker_image is not set."
  value       = local.run_worker ? aws_ecs_service.worker[0].name : null
}

output "worker_log_group" {
  description = "CloudWatch log group of the worker service, or null when worker_image is not set."
  value       = local.run_worker ? aws_cloudwatch_log_group.worker[0].name : null
}

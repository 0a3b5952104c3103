# --- general ----------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region of every resource (and MULTINODE_AWS_REGION)."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of every resource name (cluster, roles, log groups, ECR repositories). Lower case, so it is a valid ECR repository name."
  type        = string
  default     = "multinode"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,27}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-29 characters of lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- network ----------------------------------------------------------------------------------------

variable "create_vpc" {
  description = "Create a small VPC with public subnets (an internet gateway, no NAT gateway) instead of using vpc_id/subnet_ids. Handy for trying Multinode out; production accounts usually pass their own private subnets."
  type        = bool
  default     = false
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC created when create_vpc = true; each subnet is a /24 of it."
  type        = string
  default     = "10.42.0.0/16"
}

variable "az_count" {
  description = "Number of availability zones (one public subnet each) of the VPC created when create_vpc = true."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 1 && var.az_count <= 6
    error_message = "az_count must be between 1 and 6."
  }
}

variable "vpc_id" {
  description = "Existing VPC of the function containers (ignored when create_vpc = true)."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Existing subnets of the function containers (ignored when create_vpc = true). They need a route to Temporal, ECR and CloudWatch Logs: a NAT gateway (private subnets) or an internet gateway with assign_public_ip = true (public subnets)."
  type        = list(string)
  default     = []
}

variable "assign_public_ip" {
  description = "Give each Fargate task a public IP (MULTINODE_ASSIGN_PUBLIC_IP). Needed in public subnets without a NAT gateway. Default: true when create_vpc = true, false otherwise."
  type        = bool
  default     = null
}

# --- logs, images, cluster --------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the function containers' (and the worker's) CloudWatch log groups, in days; 0 keeps logs forever."
  type        = number
  default     = 30

  validation {
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

variable "ecr_image_tag_mutability" {
  description = "MUTABLE or IMMUTABLE tags in the ECR repositories."
  type        = string
  default     = "MUTABLE"

  validation {
    condition     = contains(["MUTABLE", "IMMUTABLE"], var.ecr_image_tag_mutability)
    error_message = "ecr_image_tag_mutability must be MUTABLE or IMMUTABLE."
  }
}

variable "ecr_scan_on_push" {
  description = "Scan images for known vulnerabilities when they are pushed (basic scanning, free)."
  type        = bool
  default     = true
}

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete the ECR repositories even when they still hold images."
  type        = bool
  default     = false
}

variable "container_insights" {
  description = "Enable CloudWatch Container Insights on the cluster (extra CloudWatch cost per task)."
  type        = bool
  default     = false
}

variable "enable_fargate_spot" {
  description = "Also attach the FARGATE_SPOT capacity provider to the cluster (the default strategy stays FARGATE)."
  type        = bool
  default     = true
}

# --- permissions of function containers ---------------------------------------------------------------

variable "task_role_policy_arns" {
  description = "IAM policy ARNs attached to the task role of function containers, i.e. what user code may do in AWS (e.g. read an S3 bucket). None by default."
  type        = list(string)
  default     = []
}

variable "task_role_inline_policy" {
  description = "Optional IAM policy document (JSON) put inline on the task role of function containers."
  type        = string
  default     = null
}

# --- control-plane worker -----------------------------------------------------------------------------

variable "task_queue" {
  description = "Task queue of the control-plane workers (MULTINODE_TASK_QUEUE)."
  type        = string
  default     = "multinode"
}

variable "temporal_address" {
  description = "Temporal frontend address (host:port) put into worker_environment as TEMPORAL_ADDRESS when set. Function containers connect to the same address, so it must be reachable from the subnets."
  type        = string
  default     = null
}

variable "temporal_namespace" {
  description = "Temporal namespace put into worker_environment as TEMPORAL_NAMESPACE when set."
  type        = string
  default     = null
}

variable "worker_image" {
  description = "Image of the control-plane worker (built from deploy/Dockerfile.worker). When set, the module runs it as an ECS service on Fargate; when null (the default) you run `mn worker` elsewhere with worker_environment."
  type        = string
  default     = null
}

variable "worker_secrets" {
  description = "Secret environment variables of the worker service: name -> ARN of a Secrets Manager secret or an SSM parameter, e.g. { TEMPORAL_API_KEY = \"arn:aws:secretsmanager:...\" }. The worker's execution role may read exactly these."
  type        = map(string)
  default     = {}
}

variable "worker_extra_environment" {
  description = "More plain environment variables of the worker service (e.g. TEMPORAL_TLS_SERVER_NAME)."
  type        = map(string)
  default     = {}
}

variable "worker_cpu" {
  description = "CPU units of the worker service's task (1024 = 1 vCPU)."
  type        = number
  default     = 512
}

variable "worker_memory" {
  description = "Memory of the worker service's task, in MiB."
  type        = number
  default     = 1024
}

variable "worker_desired_count" {
  description = "Number of worker tasks; any number may share the task queue."
  type        = number
  default     = 1
}

variable "worker_cpu_architecture" {
  description = "X86_64 or ARM64: the architecture the worker image was built for."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.worker_cpu_architecture)
    error_message = "worker_cpu_architecture must be X86_64 or ARM64."
  }
}

# --- general ----------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region of every resource (and MULTINODE_AWS_REGION). IAM names include it, so the same name_prefix can be applied in several regions of one account."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$", var.region)) && length(var.region) <= 16
    error_message = "region must be an AWS region name such as us-east-1 (at most 16 characters)."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (cluster, log groups, ECR repositories, the container secret, task-definition families PREFIX-fn-*; IAM roles and policies are PREFIX-REGION-*). Lower case, so it is a valid ECR repository name."
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
  description = "Create a small VPC instead of using vpc_id/subnet_ids: public subnets behind an internet gateway (tasks get a public IP), or with private_subnets = true private subnets for the tasks."
  type        = bool
  default     = false
}

variable "private_subnets" {
  description = "With create_vpc: run the tasks (and the worker service) in private subnets without public IPs. They reach AWS through VPC endpoints (ECR API and DKR, CloudWatch Logs, Secrets Manager, ECS when worker_image is set, and an S3 gateway) or, with nat_gateway = true, through a NAT gateway. Temporal needs a route too: a NAT gateway, or PrivateLink to Temporal Cloud, or a Temporal server inside the VPC."
  type        = bool
  default     = false
}

variable "nat_gateway" {
  description = "With private_subnets: one NAT gateway (in the first public subnet) gives the private subnets a route to the internet (Temporal Cloud, ECR, Logs), instead of the interface VPC endpoints. About $33 a month plus $0.045 per GB; the S3 gateway endpoint is kept either way (free)."
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
  description = "Give each Fargate task a public IP (MULTINODE_ASSIGN_PUBLIC_IP). Needed in public subnets without a NAT gateway. Default: true with create_vpc and public subnets, false otherwise."
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

variable "ecr_untagged_expiry_days" {
  description = "ECR lifecycle rule: delete untagged images (layers of interrupted pushes, images whose tag moved) this many days after they were pushed."
  type        = number
  default     = 7

  validation {
    condition     = var.ecr_untagged_expiry_days >= 1
    error_message = "ecr_untagged_expiry_days must be at least 1."
  }
}

variable "ecr_keep_tagged_images" {
  description = "ECR lifecycle rule on the functions repository, off when null (the default): keep only this many most recent tagged images and delete older ones. WARNING: versions pin their image by digest, so deleting an image breaks every version that uses it (its tasks fail with CannotPullContainerError). Set it only if you never invoke versions older than the last N registrations."
  type        = number
  default     = null

  validation {
    condition     = var.ecr_keep_tagged_images == null || try(var.ecr_keep_tagged_images >= 1, false)
    error_message = "ecr_keep_tagged_images must be null (off) or at least 1."
  }
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
  description = "Also attach the FARGATE_SPOT capacity provider to the cluster (the default strategy stays FARGATE). Needed for fargate_spot other than off."
  type        = bool
  default     = true
}

variable "fargate_spot" {
  description = "Which function executions run on FARGATE_SPOT (about 70% cheaper; AWS may reclaim a task with a 2-minute warning): off; retried = functions with max_retries >= 1, since a reclaim fails the attempt and it is retried; all. Goes into worker_environment as MULTINODE_FARGATE_SPOT."
  type        = string
  default     = "off"

  validation {
    condition     = contains(["off", "retried", "all"], var.fargate_spot)
    error_message = "fargate_spot must be off, retried or all."
  }
}

variable "create_ecs_service_linked_role" {
  description = "Create the account's ECS service-linked role (AWSServiceRoleForECS) before the cluster. Set it to true in an account that has never used ECS: ECS creates the role on first use, but not always before the first cluster or service needs it, so a first apply can fail with \"Unable to assume the service linked role\". Leave it false (the default) when the role exists (any account that has run ECS before): creating it again fails with \"has been taken in this account\". There is one per account, shared by every ECS user of it, and terraform destroy deletes it when true."
  type        = bool
  default     = false
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

# --- secrets of function containers --------------------------------------------------------------------

variable "container_secrets" {
  description = "Value of the container secret, a JSON object of the containers' secret variables (the output of `mn container-secret`). Null (the default): Terraform creates the secret empty and you put the value yourself, which keeps it out of the Terraform state: mn container-secret | aws secretsmanager put-secret-value --secret-id $(terraform output -raw container_secret_arn) --secret-string file:///dev/stdin"
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.container_secrets == null || can(keys(jsondecode(var.container_secrets)))
    error_message = "container_secrets must be a JSON object (what `mn container-secret` prints)."
  }
}

variable "container_secret_recovery_days" {
  description = "Days Secrets Manager keeps the container secret recoverable after terraform destroy (7-30), or 0 to delete it at once. While it waits, applying the same name_prefix in the same region again fails (the name is taken)."
  type        = number
  default     = 7

  validation {
    condition     = var.container_secret_recovery_days == 0 || (var.container_secret_recovery_days >= 7 && var.container_secret_recovery_days <= 30)
    error_message = "container_secret_recovery_days must be 0 or between 7 and 30."
  }
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

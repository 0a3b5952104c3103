terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 5.100.0 is pinned in .terraform.lock.hcl and applied against moto in tests/test_deploy.py.
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ "multinode:deployment" = var.name_prefix, "managed-by" = "terraform" }, var.tags)
  }
}

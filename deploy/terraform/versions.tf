terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Tested with 5.100.0 (applied against moto in tests/test_deploy.py).
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

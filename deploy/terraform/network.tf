# Optional small VPC (create_vpc = true). By default: public subnets behind an internet gateway, no NAT
# gateway, so function containers need a public IP (assign_public_ip defaults to true then) and the
# network costs nothing while idle. With private_subnets = true the tasks run in private subnets
# without public IPs, and reach AWS through VPC endpoints or (nat_gateway = true) a NAT gateway.

data "aws_availability_zones" "available" {
  count = var.create_vpc ? 1 : 0
  state = "available"
}

resource "aws_vpc" "this" {
  count                = var.create_vpc ? 1 : 0
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name_prefix }
}

resource "aws_internet_gateway" "this" {
  count  = var.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id

  tags = { Name = var.name_prefix }
}

resource "aws_subnet" "public" {
  count             = var.create_vpc ? var.az_count : 0
  vpc_id            = aws_vpc.this[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, count.index)
  availability_zone = data.aws_availability_zones.available[0].names[count.index % length(data.aws_availability_zones.available[0].names)]

  tags = { Name = "${var.name_prefix}-public-${count.index}" }
}

resource "aws_route_table" "public" {
  count  = var.create_vpc ? 1 : 0
  vpc_id = aws_vpc.this[0].id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }

  tags = { Name = "${var.name_prefix}-public" }
}

resource "aws_route_table_association" "public" {
  count          = var.create_vpc ? var.az_count : 0
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

# --- private subnets (private_subnets = true) ----------------------------------------------------------

locals {
  # Interface endpoints replace the NAT gateway's route to the AWS APIs the tasks (and the worker
  # service) call; with a NAT gateway they would only add cost.
  interface_endpoints = local.private && !var.nat_gateway ? toset(concat(
    ["ecr.api", "ecr.dkr", "logs", "secretsmanager"],
    local.run_worker ? ["ecs"] : [], # the worker service's RunTask and friends
  )) : toset([])
}

resource "aws_subnet" "private" {
  count             = local.private ? var.az_count : 0
  vpc_id            = aws_vpc.this[0].id
  cidr_block        = cidrsubnet(var.vpc_cidr, 8, 128 + count.index)
  availability_zone = aws_subnet.public[count.index].availability_zone

  tags = { Name = "${var.name_prefix}-private-${count.index}" }
}

resource "aws_eip" "nat" {
  count  = local.private && var.nat_gateway ? 1 : 0
  domain = "vpc"

  tags = { Name = "${var.name_prefix}-nat" }
}

# One NAT gateway for all zones: a zone outage cuts the others' internet route too, at a third of the
# cost of one per zone.
resource "aws_nat_gateway" "this" {
  count         = local.private && var.nat_gateway ? 1 : 0
  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id

  tags       = { Name = var.name_prefix }
  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "private" {
  count  = local.private ? 1 : 0
  vpc_id = aws_vpc.this[0].id

  tags = { Name = "${var.name_prefix}-private" }
}

resource "aws_route" "private_nat" {
  count                  = local.private && var.nat_gateway ? 1 : 0
  route_table_id         = aws_route_table.private[0].id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

resource "aws_route_table_association" "private" {
  count          = local.private ? var.az_count : 0
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private[0].id
}

# Image layers come from S3: a gateway endpoint is free and keeps them off the NAT gateway.
resource "aws_vpc_endpoint" "s3" {
  count             = local.private ? 1 : 0
  vpc_id            = aws_vpc.this[0].id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private[0].id]

  tags = { Name = "${var.name_prefix}-s3" }
}

resource "aws_security_group" "endpoints" {
  count       = length(local.interface_endpoints) > 0 ? 1 : 0
  name_prefix = "${var.name_prefix}-endpoints-"
  description = "VPC interface endpoints of Multinode: HTTPS from the VPC."
  vpc_id      = aws_vpc.this[0].id

  ingress {
    description = "HTTPS from the VPC"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  tags = { Name = "${var.name_prefix}-endpoints" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = local.interface_endpoints
  vpc_id              = aws_vpc.this[0].id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints[0].id]
  private_dns_enabled = true

  tags = { Name = "${var.name_prefix}-${each.key}" }
}

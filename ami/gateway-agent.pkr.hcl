# Gateway AMI with gateway-agent baked in: Amazon Linux 2023 (the .rpm) and Debian 12 (the .deb).
#
#   packer build -var region=eu-west-1 -var subnet_id=subnet-0123 ami/gateway-agent.pkr.hcl
#   packer build -only 'amazon-ebs.debian12' ... ami/gateway-agent.pkr.hcl   # one image only
#
# The package is installed and the service enabled, NOT started: the build instance must never
# claim an ENI or touch routes, and the image carries no config (the packaged one is deliberately
# unconfigured). Each gateway gets its config from user data (cloud-init write_files, see
# packaging/examples/gateway-vpc.yaml) before the agent starts at boot.
#
# For current Packer (1.8+, `packer init ami/` fetches the amazon plugin). The lines between
# "modern-packer-only" markers are what Packer 1.6.6 (Debian 12's, built-in amazon-ebs) does not
# know; ami/validate.sh strips them and runs 1.6.6's `packer validate` on the rest, and parses the
# whole file as HCL2. Keep every modern-only line between markers.

# modern-packer-only: begin
packer {
  required_version = ">= 1.8.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.2.0"
    }
  }
}
# modern-packer-only: end

variable "region" {
  type        = string
  description = "AWS region to build in; the AMI is registered there."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the build instance (needs a route to the internet for SSH and package mirrors). Empty: the default VPC."
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64, or arm64 for Graviton (needs packages built for aarch64: see packaging/README-install.md)."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Build instance type; must match arch (e.g. t4g.small for arm64)."
}

variable "deb_path" {
  type        = string
  default     = "target/packages/gateway-agent_0.1.0-1_amd64.deb"
  description = "The .deb for the Debian 12 image (packaging/test.sh writes it to $CARGO_TARGET_DIR/packages)."
}

variable "rpm_path" {
  type        = string
  default     = "target/packages/gateway-agent-0.1.0-1.x86_64.rpm"
  description = "The .rpm for the Amazon Linux 2023 image."
}

variable "ami_name_prefix" {
  type    = string
  default = "gateway-agent"
}

locals {
  # Packer's own clock: one timestamp names both images of one build.
  stamp = formatdate("YYYYMMDD-hhmm", timestamp())
  # Debian's and Amazon's image names spell the architecture differently.
  debian_arch = var.arch == "arm64" ? "arm64" : "amd64"
  tags = {
    "gateway-agent:ami" = "true"
    "built-by"          = "packer"
  }
}

source "amazon-ebs" "al2023" {
  region        = var.region
  subnet_id     = var.subnet_id
  instance_type = var.instance_type
  ami_name      = "${var.ami_name_prefix}-al2023-${var.arch}-${local.stamp}"
  ssh_username  = "ec2-user"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-kernel-*-${var.arch}"
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  # modern-packer-only: begin
  # IMDSv2 only, one hop: on the build instance, and (imds_support) the default of every
  # instance launched from the image. Raise the hop limit only for containers that need IMDS.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  # modern-packer-only: end
  tags          = local.tags
  snapshot_tags = local.tags
}

source "amazon-ebs" "debian12" {
  region        = var.region
  subnet_id     = var.subnet_id
  instance_type = var.instance_type
  ami_name      = "${var.ami_name_prefix}-debian12-${var.arch}-${local.stamp}"
  ssh_username  = "admin"
  source_ami_filter {
    filters = {
      name                = "debian-12-${local.debian_arch}-*"
      architecture        = var.arch
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    # Debian's cloud team account, the publisher of the official Debian AMIs.
    owners      = ["136693071363"]
    most_recent = true
  }
  # modern-packer-only: begin
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  # modern-packer-only: end
  tags          = local.tags
  snapshot_tags = local.tags
}

build {
  sources = ["source.amazon-ebs.al2023", "source.amazon-ebs.debian12"]

  provisioner "file" {
    only        = ["amazon-ebs.al2023"]
    source      = var.rpm_path
    destination = "/tmp/gateway-agent.rpm"
  }

  provisioner "file" {
    only        = ["amazon-ebs.debian12"]
    source      = var.deb_path
    destination = "/tmp/gateway-agent.deb"
  }

  provisioner "shell" {
    script          = "ami/scripts/install.sh"
    execute_command = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }}"
  }

  # Last: removes the build instance's identity (machine-id, SSH host keys, cloud-init state,
  # the build's SSH key, logs), so every gateway boots as a new machine.
  provisioner "shell" {
    script          = "ami/scripts/cleanup.sh"
    execute_command = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }}"
  }
}

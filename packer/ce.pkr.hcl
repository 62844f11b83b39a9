# The CE image: ce's HTTPS worker on Debian 12, built with Packer's qemu builder from the debootstrap base disk that
# scripts/base-disk.sh makes (no ISO or cloud image is downloaded). `make image` runs it; packer/README.md explains.
# Works with Debian's packer 1.6.6 (HCL2 without required_plugins, templatefile or file content provisioners).

variable "base_image" {
  type        = string
  description = "Base disk from scripts/base-disk.sh (qcow2)."
}

variable "output_dir" {
  type    = string
  default = "build/image/out"
}

variable "vm_name" {
  type    = string
  default = "ce.qcow2"
}

variable "disk_size" {
  type        = string
  default     = "4096M"
  description = "Virtual size of the image; must equal the base disk's (CE_BASE_DISK_SIZE, default 4G)."
}

variable "cpus" {
  type    = number
  default = 2
}

variable "memory" {
  type    = number
  default = 2048
}

variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "kvm where nested virtualisation works; tcg (software) everywhere else."
  validation {
    condition     = contains(["tcg", "kvm"], var.accelerator)
    error_message = "The accelerator must be tcg or kvm."
  }
}

variable "ssh_private_key_file" {
  type        = string
  description = "Per-build key (scripts/build-image.sh makes one and deletes it afterwards)."
}

variable "ssh_public_key_file" {
  type        = string
  description = "Its public half, handed to the VM through QEMU fw_cfg (opt/ce/build_key)."
}

variable "wheelhouse" {
  type        = string
  description = "Directory with the ce wheel built from this checkout and its Python dependencies."
}

variable "serial_log" {
  type    = string
  default = "build/image/build-serial.log"
}

variable "python" {
  type        = string
  default     = ".venv/bin/python"
  description = "Python with ce installed, for the conversions (ce.disks)."
}

variable "formats" {
  type        = list(string)
  default     = ["qcow2", "azure-vhd", "vsphere-vmdk", "gce-tar", "xenserver-vhd"]
  description = "Outputs from the one build; see scripts/outputs.py."
  validation {
    condition     = length([for f in var.formats : f if ! contains(["qcow2", "azure-vhd", "vsphere-vmdk", "gce-tar", "xenserver-vhd"], f)]) == 0
    error_message = "Formats are qcow2, azure-vhd, vsphere-vmdk, gce-tar and xenserver-vhd."
  }
}

source "qemu" "ce" {
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = "none"
  use_backing_file = false
  format           = "qcow2"
  disk_size        = var.disk_size
  disk_interface   = "virtio"
  disk_discard     = "unmap"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  cpus             = var.cpus
  memory           = var.memory
  headless         = true
  vnc_bind_address = "127.0.0.1"
  output_directory = var.output_dir
  vm_name          = var.vm_name

  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  host_port_min        = 2222
  host_port_max        = 2299
  boot_wait            = "1s"
  shutdown_command     = "systemctl poweroff"
  shutdown_timeout     = "10m"

  qemuargs = [
    # the default forward listens on every address; the build VM is reachable from this host only
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-fw_cfg", "name=opt/ce/build_key,file=${var.ssh_public_key_file}"],
    ["-serial", "file:${var.serial_log}"],
  ]
}

build {
  sources = ["source.qemu.ce"]

  provisioner "shell" {
    inline = ["rm -rf /tmp/ce-build", "mkdir -p /tmp/ce-build/files /tmp/ce-build/wheels"]
  }
  provisioner "file" {
    source      = "${path.root}/files/"
    destination = "/tmp/ce-build/files"
  }
  provisioner "file" {
    source      = "${var.wheelhouse}/"
    destination = "/tmp/ce-build/wheels"
  }
  provisioner "file" {
    source      = "${path.root}/../debian-packages.txt"
    destination = "/tmp/ce-build/debian-packages.txt"
  }
  provisioner "file" {
    source      = "${path.root}/image-packages.txt"
    destination = "/tmp/ce-build/image-packages.txt"
  }
  provisioner "file" {
    source      = "${path.root}/README.md"
    destination = "/tmp/ce-build/README.md"
  }
  provisioner "shell" {
    scripts = ["${path.root}/scripts/provision.sh", "${path.root}/scripts/finalize.sh"]
  }

  post-processor "shell-local" {
    inline = ["${var.python} ${path.root}/scripts/outputs.py ${var.output_dir}/${var.vm_name} ${join(" ", var.formats)}"]
  }
}

#!/bin/sh
# Installs every Debian package the corpus capture needs (run as root).
# .ci/run calls it before `go test ./...`; developers run it once.
#
#   qemu-system-x86  qemu-system-x86_64 with TCG plugin support (Debian 12: 7.2)
#   gcc libc6-dev    build the aqtrace TCG plugin
#   e2fsprogs        mkfs.ext4 -d for the guest root filesystem
#   apt, dpkg        apt-get download / dpkg -x of the guest packages (present
#                    on every Debian); ldconfig (libc-bin) for ld.so.cache
#
# The guest's own packages (cloud kernel, busybox-static, python3 and the
# function libraries) are not installed on the host: the pipeline downloads
# them with apt-get download into its cache. They need fresh package lists,
# hence the apt-get update.
set -eu
if [ "$(id -u)" != 0 ]; then
	echo "corpus/ci-deps.sh: must run as root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends qemu-system-x86 gcc libc6-dev e2fsprogs coreutils >/dev/null
qemu-system-x86_64 --version | head -n 1

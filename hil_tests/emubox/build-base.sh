#!/usr/bin/env bash
# Build the emulated box's base: an arm64 Debian root filesystem laid out like Raspberry Pi OS
# Lite, made once with debootstrap + qemu-user-static and cached outside the repo.
#   hil_tests/emubox/build-base.sh CACHE_DIR
# Produces CACHE_DIR/rootfs/ (the tree), CACHE_DIR/vmlinuz, CACHE_DIR/initrd.img and
# CACHE_DIR/base.stamp. Re-running with a complete cache does nothing; a tree from an earlier
# version only gets the later stages. Needs root.
set -euo pipefail
cache=${1:?usage: build-base.sh CACHE_DIR}
suite=${BITCHAT_HIL_SUITE:-bookworm}
mirror=${BITCHAT_HIL_MIRROR:-http://deb.debian.org/debian}
stamp="$cache/base.stamp"
tree="suite=$suite v3"            # debootstrap, kernel and initramfs, Raspberry Pi OS layout
want="$tree timesyncd"             # + the later stages below

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "base cached in $cache"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "error: building the emulated box base needs root" >&2; exit 1; }
for tool in debootstrap qemu-aarch64-static; do
  command -v "$tool" >/dev/null || { echo "error: $tool missing (scripts/setup.sh --test)" >&2; exit 1; }
done

# qemu-user runs the arm64 maintainer scripts: binfmt_misc must be mounted and enabled.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 2>/dev/null || update-binfmts --import qemu-aarch64
fi

chroot_mounts() {
  mount -t proc proc "$1/proc"; mount -t sysfs sys "$1/sys"; mount --bind /dev "$1/dev"
}

mkdir -p "$cache"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$tree" ]; then
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'umount -R "$work/rootfs/proc" "$work/rootfs/sys" "$work/rootfs/dev" 2>/dev/null || true; rm -rf "$work"' EXIT
root="$work/rootfs"

echo "== debootstrap $suite arm64 (minbase) into $root"
debootstrap --arch=arm64 --variant=minbase \
  --include=systemd-sysv,udev,kmod,dbus,openssh-server,python3,python3-venv,python3-dev,gcc,libc6-dev,iproute2,ca-certificates,sudo,e2fsprogs \
  "$suite" "$root" "$mirror"

echo "== kernel with a small initramfs (only the modules the virt machine needs)"
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' > "$root/etc/initramfs-tools/conf.d/bitchat-emubox"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_mmio\next4\nvfat\nnls_ascii\nnls_cp437\n' \
  >> "$root/etc/initramfs-tools/modules"
chroot_mounts "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  linux-image-arm64 initramfs-tools
chroot "$root" apt-get clean
umount "$root/proc" "$root/sys" "$root/dev"

echo "== Raspberry Pi OS layout: /boot/firmware, networking, console"
mkdir -p "$root/boot/firmware"
# Bookworm mounts the FAT partition on /boot/firmware; Imager-style cmdlines still name
# /boot/firstrun.sh, which Raspberry Pi OS resolves through this link.
ln -sf /boot/firmware/firstrun.sh "$root/boot/firstrun.sh"
cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda2  /               ext4  defaults,noatime  0 1
/dev/vda1  /boot/firmware  vfat  defaults,x-systemd.device-timeout=600s  0 2
FSTAB
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/20-wired.network"
ln -sf /lib/systemd/system/systemd-networkd.service \
  "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/serial-getty@.service \
  "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyAMA0.service"
echo raspberrypi > "$root/etc/hostname"
rm -f "$root/etc/ssh/ssh_host_"*   # generated at first boot, like Raspberry Pi OS
cat > "$root/etc/systemd/system/regenerate-ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/regenerate-ssh-host-keys.service \
  "$root/etc/systemd/system/multi-user.target.wants/regenerate-ssh-host-keys.service"
: > "$root/etc/machine-id"

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n1)
rm -rf "$cache/rootfs"
cp "$kernel" "$cache/vmlinuz"
cp "$initrd" "$cache/initrd.img"
mv "$root" "$cache/rootfs"
echo "$tree" > "$stamp"
trap - EXIT
rm -rf "$work"
fi

# Raspberry Pi OS Lite keeps time with systemd-timesyncd: a Pi has no RTC, so the clock comes
# from NTP, or at boot from the time saved in /var/lib/systemd/timesync/clock.
echo "== systemd-timesyncd"
root="$cache/rootfs"
trap 'umount "$root/proc" "$root/sys" "$root/dev" 2>/dev/null || true' EXIT
chroot_mounts "$root"
chroot "$root" apt-get update -q
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  systemd-timesyncd
chroot "$root" apt-get clean
umount "$root/proc" "$root/sys" "$root/dev"
trap - EXIT
echo "$want" > "$stamp"
echo "== base ready in $cache"

#!/usr/bin/env bash
# Buildroot's post-image script of every baetyl board. Buildroot calls it from its own directory with
#   $1  the images directory (BINARIES_DIR), then BR2_ROOTFS_POST_SCRIPT_ARGS:
#   $2  the boot medium: efi-x86_64, efi-aarch64 (the kernel is the EFI application, as the UKI of
#       `baetyl image build`) or rpi4, rpi5 (the Raspberry Pi firmware, device trees, config.txt, cmdline.txt,
#       kernel, in boot slot A of the card; autoboot.txt for the firmware's tryboot A/B)
#   $3  the partition layout: a file name under image/genimage/ of this repository (disk.cfg for the EFI disks,
#       rpi.cfg for the Pi card), used as it is, never copied: one source for `baetyl image build` and Buildroot.
# It makes the partition images genimage's layout takes (boot.vfat or config.vfat, boot-a.vfat, boot-b.vfat;
# data.ext4; Buildroot made rootfs.squashfs) and lays out the disk with Buildroot's genimage. Environment: BAETYL_DATA_MIB (default 64) and BAETYL_APP, a
# master work-dir tree for the data partition (default: the application `baetyl image build` puts there).
set -euo pipefail
images=$1 boot=${2:?boot medium (efi-x86_64, efi-aarch64, rpi4, rpi5)} layout=${3:?genimage config under image/genimage}
repo=$(realpath "$BR2_EXTERNAL_BAETYL_PATH/..")
cfg=$repo/image/genimage/$layout
[ -f "$cfg" ] || { echo "post-image: $cfg does not exist (BR2_ROOTFS_POST_SCRIPT_ARGS names image/genimage/$layout)" >&2; exit 1; }
work=$BUILD_DIR/baetyl-image
rm -rf "$work"
mkdir -p "$work/boot" "$work/data"
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
size_mib() { # bytes, headroom percent, minimum MiB: the rule of image/src/disk.rs (size_mib)
    local m; m=$(mib $(( $1 + $1 * $2 / 100 ))); echo $(( m > $3 ? m : $3 ))
}

# The boot partition's files.
case $boot in
    efi-x86_64) install -D -m 0644 "$images/bzImage" "$work/boot/EFI/BOOT/BOOTX64.EFI" ;;
    efi-aarch64) install -D -m 0644 "$images/Image" "$work/boot/EFI/BOOT/BOOTAA64.EFI" ;;
    rpi4|rpi5)
        cp -r "$images"/rpi-firmware/. "$work/boot/"
        cp "$images"/*.dtb "$images/Image" "$work/boot/"
        ;;
    *) echo "post-image: unknown boot medium '$boot' (efi-x86_64, efi-aarch64, rpi4, rpi5)" >&2; exit 1 ;;
esac
fat() { # image, label, MiB, files...: a FAT image holding the files
    local img=$1 label=$2 size=$3; shift 3
    rm -f "$img"
    mkfs.vfat -n "$label" -C "$img" $(( size * 1024 )) >/dev/null
    [ $# -eq 0 ] || mcopy -s -p -m -i "$img" "$@" ::/
}
case $boot in
    rpi4|rpi5)
        # The card of image/genimage/rpi.cfg (as `baetyl image build --board`): its disk signature 0xbae771TT
        # names the slots' roots (PARTUUID bae771TT-05 for slot A); autoboot.txt boots slot A (partition 2) and,
        # with the firmware's one-shot tryboot flag, slot B (partition 3); slot B stays empty for an OS update.
        export BAETYL_BOARD_TAG; BAETYL_BOARD_TAG=$([ "$boot" = rpi4 ] && echo 03 || echo 05)
        printf '%s baetyl.root.device=PARTUUID=bae771%s-05\n' "$(tr -d '\n' < "$work/boot/cmdline.txt")" \
            "$BAETYL_BOARD_TAG" > "$work/boot/cmdline.txt.new"
        mv "$work/boot/cmdline.txt.new" "$work/boot/cmdline.txt"
        mkdir -p "$work/config"
        printf '[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n' > "$work/config/autoboot.txt"
        bytes=$(du -sb "$work/boot" | cut -f1)
        export BAETYL_BOOT_MIB; BAETYL_BOOT_MIB=$(size_mib "$bytes" 100 64)
        fat "$images/config.vfat" BAETYL-CFG 8 "$work/config/autoboot.txt"
        fat "$images/boot-a.vfat" BOOT-A "$BAETYL_BOOT_MIB" "$work/boot"/*
        fat "$images/boot-b.vfat" BOOT-B "$BAETYL_BOOT_MIB"
        ;;
    *)
        bytes=$(du -sb "$work/boot" | cut -f1)
        export BAETYL_BOOT_MIB; BAETYL_BOOT_MIB=$(size_mib "$bytes" 100 48)
        fat "$images/boot.vfat" BOOT "$BAETYL_BOOT_MIB" "$work/boot"/*
        # The identifiers of disk.cfg carry the architecture.
        export BAETYL_ARCH_TAG; BAETYL_ARCH_TAG=$([ "$boot" = efi-aarch64 ] && echo 02 || echo 01)
        ;;
esac

# The read-only root: Buildroot's rootfs.squashfs (BR2_TARGET_ROOTFS_SQUASHFS) in root-a; root-b the same size.
export BAETYL_ROOT_MIB; BAETYL_ROOT_MIB=$(size_mib "$(stat -c %s "$images/rootfs.squashfs")" 100 64)

# The data partition: the master's work dir with its application.
if [ -n "${BAETYL_APP:-}" ]; then
    cp -r "$BAETYL_APP"/. "$work/data/"
else
    app=$work/data/var/db/baetyl
    install -D -m 0644 "$repo/examples/image/application.yml" "$app/application.yml"
    cp -r "$repo/examples/image/conf" "$app/"
    for svc in hub timer function-sql; do
        install -D -m 0644 "$repo/examples/default/conf/$svc/service.yml" "$app/conf/$svc/service.yml"
    done
    mkdir -p "$app/hub-data"
fi
export BAETYL_DATA_MIB=${BAETYL_DATA_MIB:-64}
rm -f "$images/data.ext4"
mkfs.ext4 -q -L baetyl-data -E root_owner=0:0 -d "$work/data" "$images/data.ext4" "${BAETYL_DATA_MIB}M"

echo "post-image: $layout with boot ${BAETYL_BOOT_MIB} MiB, root-a/root-b ${BAETYL_ROOT_MIB} MiB, data ${BAETYL_DATA_MIB} MiB"
support/scripts/genimage.sh -c "$cfg"
# The card's block map for `bmaptool copy` (host-bmap-tools), as `baetyl image build --board` writes one.
case $boot in rpi4|rpi5) bmaptool create -o "$images/sdcard.img.bmap" "$images/sdcard.img" ;; esac
rm -rf "$work"

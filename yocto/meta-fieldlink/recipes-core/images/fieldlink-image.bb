SUMMARY = "fieldlink gateway image: read-only A/B root, RAUC updates, TPM 2.0"
DESCRIPTION = "A minimal systemd image that runs the fieldlink gateway. The root filesystem \
               is read-only and lives in one of two RAUC slots (A/B); state lives on a data \
               partition mounted at /var/lib, outside both slots, so an update never touches \
               the queue."
SECTION = "images"
LICENSE = "MIT"

inherit core-image

# Only what a gateway needs: boot, networking (systemd-networkd, in the systemd package),
# time sync (systemd-timesyncd: TLS checks need a right clock on a board without RTC), the
# gateway, the updater (it pulls in fw_setenv; u-boot-env brings /etc/fw_env.config, where
# U-Boot's environment is) and the TPM. No package manager: the image is updated whole by RAUC.
IMAGE_INSTALL = "\
    packagegroup-core-boot \
    fieldlink \
    rauc \
    ${FIELDLINK_POLKIT_PACKAGES} \
    u-boot-env \
    kernel-image \
    ${FIELDLINK_TPM_PACKAGES} \
"

# polkit (meta-oe; duktape, no JavaScript JIT): logind asks it whether fieldlink's OTA agent
# may reboot the board (the rule in /usr/share/polkit-1/rules.d/fieldlink.rules). Without it,
# logind lets root alone reboot. The distro turns on systemd's polkit support.
FIELDLINK_POLKIT_PACKAGES ?= "polkit polkit-dbus polkit-service"

# The TPM 2.0 stack (meta-tpm): the TSS libraries and the device TCTI for the kernel's resource
# manager (/dev/tpmrm0; no tpm2-abrmd daemon), and tpm2-pkcs11 so keys can live in the TPM.
# The provisioning tools (tpm2-tools, tpm2_ptool) are for making keys at the factory; drop
# them here when keys are provisioned another way (tpm2-pkcs11-tools pulls in Python).
FIELDLINK_TPM_PACKAGES ?= "libtss2 libtss2-tcti-device tpm2-pkcs11 ${FIELDLINK_TPM_TOOLS}"
FIELDLINK_TPM_TOOLS ?= "tpm2-tools tpm2-pkcs11-tools"

# The root filesystem is read-only: the slot a bundle writes is the one not running, and the
# running one must never change under it. /etc is part of the image (and so updated with it).
IMAGE_FEATURES += "read-only-rootfs"

# The kernel lives in the root filesystem (/boot), so one slot holds a matching kernel and
# userland and an update replaces both; the boot script loads it from the chosen slot.
IMAGE_FSTYPES = "ext4 wic.bz2"
WKS_FILE = "fieldlink-ab.wks.in"
# The boot partition: boot.scr (fieldlink-boot-script); on a Raspberry Pi also the firmware
# and u-boot.bin, which meta-raspberrypi lists in IMAGE_BOOT_FILES itself.
IMAGE_BOOT_FILES:qemuarm64 = "boot.scr"
do_image_wic[depends] += "fieldlink-boot-script:do_deploy"
# runqemu starts U-Boot (u-boot.bin, QB_DEFAULT_BIOS in the kas file): have it deployed.
EXTRA_IMAGEDEPENDS:append:qemuarm64 = " virtual/bootloader"

# Slot size: the ext4 image is made this size so that it fits a slot of FIELDLINK_SLOT_SIZE.
FIELDLINK_SLOT_SIZE ?= "1024"
IMAGE_ROOTFS_MAXSIZE = "${@int(d.getVar('FIELDLINK_SLOT_SIZE')) * 1024}"

SUMMARY = "U-Boot script that boots root slot A or B of a fieldlink gateway"
DESCRIPTION = "boot.scr for the boot partition: picks the slot from BOOT_ORDER and the \
               attempt counters RAUC maintains, falls back to the other slot after failed \
               boots, and loads the kernel from the chosen slot's /boot."
HOMEPAGE = "https://example.invalid/fieldlink"
SECTION = "bootloaders"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://boot.cmd.in;beginline=1;endline=2;md5=f6ddb5a7ca7f9f90490ba6b4081a3e0e"

DEPENDS = "u-boot-mkimage-native"

# meta-raspberrypi's U-Boot takes boot.scr from the provider of u-boot-default-script.
PROVIDES += "u-boot-default-script"

SRC_URI = "file://boot.cmd.in"

S = "${UNPACKDIR}"

inherit deploy nopackages

INHIBIT_DEFAULT_DEPS = "1"

COMPATIBLE_MACHINE = "^(qemuarm64|rpi)$"

# Where the slots are, per machine. The Raspberry Pi firmware passes its own device tree (with
# cmdline.txt's arguments in /chosen/bootargs); QEMU's virt machine hands U-Boot one too.
# Values are U-Boot script text: a ${name} in them is U-Boot's variable, not bitbake's.
FIELDLINK_BOOT_INTERFACE ?= "mmc"
FIELDLINK_BOOT_INTERFACE:qemuarm64 = "virtio"
FIELDLINK_BOOT_DEVICE ?= "0"
FIELDLINK_ROOT_DEVICE_PREFIX ?= "/dev/mmcblk0p"
FIELDLINK_ROOT_DEVICE_PREFIX:qemuarm64 = "/dev/vda"
FIELDLINK_FDT_ADDR ?= "$fdt_addr"
FIELDLINK_FDT_ADDR:qemuarm64 = "$fdtcontroladdr"
FIELDLINK_BOOTARGS_BASE ?= "fdt addr $fdt_addr; fdt get value bootargs /chosen bootargs"
FIELDLINK_BOOTARGS_BASE:qemuarm64 = "setenv bootargs console=ttyAMA0,115200"

do_compile() {
    sed -e 's|@@BOOT_INTERFACE@@|${FIELDLINK_BOOT_INTERFACE}|g' \
        -e 's|@@BOOT_DEVICE@@|${FIELDLINK_BOOT_DEVICE}|g' \
        -e 's|@@ROOT_DEVICE_PREFIX@@|${FIELDLINK_ROOT_DEVICE_PREFIX}|g' \
        -e 's|@@FDT_ADDR@@|${FIELDLINK_FDT_ADDR}|g' \
        -e 's|@@BOOTARGS_BASE@@|${FIELDLINK_BOOTARGS_BASE}|g' \
        -e 's|@@KERNEL_IMAGETYPE@@|${KERNEL_IMAGETYPE}|g' \
        ${UNPACKDIR}/boot.cmd.in > ${B}/boot.cmd
    if grep -q '@@' ${B}/boot.cmd; then
        bbfatal "boot.cmd has unfilled placeholders: $(grep -o '@@[A-Z_]*@@' ${B}/boot.cmd | sort -u | tr '\n' ' ')"
    fi
    mkimage -A arm64 -T script -C none -n "fieldlink A/B boot" -d ${B}/boot.cmd ${B}/boot.scr
}

do_deploy() {
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/boot.scr
}
addtask deploy after do_compile before do_build

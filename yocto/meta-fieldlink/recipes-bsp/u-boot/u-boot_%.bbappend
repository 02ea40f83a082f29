# qemuarm64: U-Boot's environment in uboot.env on the boot partition, and the fw_env.config
# that lets RAUC change it. (The Raspberry Pi's U-Boot keeps it there already, and
# meta-raspberrypi ships the same fw_env.config.)
FILESEXTRAPATHS:prepend:fieldlink-gateway := "${THISDIR}/files:"
SRC_URI:append:fieldlink-gateway:qemuarm64 = " file://fieldlink-env-in-fat.cfg file://fw_env.config"

SUMMARY = "RAUC update bundle of the fieldlink gateway image"
DESCRIPTION = "A signed verity bundle holding fieldlink-image's ext4 root filesystem, for the \
               inactive A/B slot. Signed with the development key from \
               yocto/scripts/make-dev-keys unless RAUC_KEY_FILE and RAUC_CERT_FILE name others \
               (production: yocto/README.md, Signing)."
HOMEPAGE = "https://example.invalid/fieldlink"
SECTION = "base"
LICENSE = "MIT"
# A bundle has no sources of its own: it packs the image from DEPLOY_DIR_IMAGE.
SRC_URI = ""

inherit bundle

RAUC_BUNDLE_FORMAT = "verity"
# Equal to the compatible of the image's system.conf (rauc-conf.bbappend, layer.conf).
RAUC_BUNDLE_COMPATIBLE = "${FIELDLINK_RAUC_COMPATIBLE}"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "fieldlink gateway image"

RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "fieldlink-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

RAUC_KEY_FILE ?= "${FIELDLINK_RAUC_KEYS_DIR}/development-1.key.pem"
RAUC_CERT_FILE ?= "${FIELDLINK_RAUC_KEYS_DIR}/development-1.cert.pem"
# do_bundle checks the new bundle against the keyring the image trusts.
RAUC_KEYRING_FILE ?= "${FIELDLINK_RAUC_KEYS_DIR}/ca.cert.pem"

do_bundle:append() {
    # Fail the build, not the field update: the bundle must verify the way the image will
    # check it (the keyring, and a code-signing certificate: check-purpose=codesign).
    printf '[system]\ncompatible=%s\nbootloader=noop\n\n[keyring]\npath=%s\ncheck-purpose=codesign\n' \
        "${RAUC_BUNDLE_COMPATIBLE}" "${RAUC_KEYRING_FILE}" > ${WORKDIR}/verify-system.conf
    ${STAGING_BINDIR_NATIVE}/rauc --conf=${WORKDIR}/verify-system.conf info ${B}/bundle.raucb >/dev/null
}

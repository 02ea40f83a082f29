# fieldlink's RAUC system.conf (A/B root, U-Boot) for qemuarm64 and the Raspberry Pi 4/5 (the
# "rpi" override of meta-raspberrypi's machines), and the keyring bundles must chain to:
# ca.cert.pem from FIELDLINK_RAUC_KEYS_DIR (development: yocto/scripts/make-dev-keys;
# production: the production CA, see yocto/README.md).
FILESEXTRAPATHS:prepend:fieldlink-gateway := "${THISDIR}/files:${FIELDLINK_RAUC_KEYS_DIR}:"

RAUC_KEYRING_FILE:fieldlink-gateway = "ca.cert.pem"

do_install:append:fieldlink-gateway() {
    # One compatible string per machine, the one the bundle carries (fieldlink-bundle):
    # a Raspberry Pi 4 image is never installed on a Pi 5.
    sed -i -e 's/@@COMPATIBLE@@/${FIELDLINK_RAUC_COMPATIBLE}/' ${D}${nonarch_libdir}/rauc/system.conf

    # meta-rauc ships an example ca.cert.pem further down FILESPATH: make sure the keyring
    # in the image is the one from FIELDLINK_RAUC_KEYS_DIR.
    if ! cmp -s ${D}${nonarch_libdir}/rauc/ca.cert.pem ${FIELDLINK_RAUC_KEYS_DIR}/ca.cert.pem; then
        bbfatal "rauc-conf: no keyring at ${FIELDLINK_RAUC_KEYS_DIR}/ca.cert.pem; run yocto/scripts/make-dev-keys or set FIELDLINK_RAUC_KEYS_DIR"
    fi
}

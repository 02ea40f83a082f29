SUMMARY = "fieldlink edge gateway: local MQTT broker, field devices, durable TLS uplink"
DESCRIPTION = "One daemon for Raspberry-Pi-class gateways: a local MQTT broker for the site's \
               sensors, Modbus RTU/TCP and line-protocol field devices, a store-and-forward \
               queue on SQLite that survives outages and power cuts, and a hardened TLS uplink \
               to a cloud MQTT broker."
HOMEPAGE = "https://example.invalid/fieldlink"
SECTION = "net"
# fieldlink's own licence. The statically linked crates carry their own (MIT, Apache-2.0,
# BSD, ISC, Unicode, ...): see yocto/README.md, "Licences".
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# openssl-sys links the system libssl (TLS-PSK uplink); ring and the bundled SQLite are
# compiled from their crates with the cross C compiler.
DEPENDS = "openssl"

PV = "0.1.0+git"

# The source is the git repository that holds this layer, at the commit checked out there
# (committed files only: target/ and local edits are not built). A release build points
# FIELDLINK_GIT_URI at the published repository and sets SRCREV to the release tag's commit.
FIELDLINK_GIT_URI ?= "git://${FIELDLINK_REPO_DIR};protocol=file;nobranch=1"
SRC_URI = "${FIELDLINK_GIT_URI}"
SRCREV ?= "${@fieldlink_checked_out_commit(d)}"

def fieldlink_checked_out_commit(d):
    import subprocess
    repo = d.getVar('FIELDLINK_REPO_DIR')
    try:
        return subprocess.check_output(['git', '-C', repo, 'rev-parse', 'HEAD'], text=True).strip()
    except (OSError, subprocess.CalledProcessError) as e:
        bb.fatal("fieldlink: cannot read the checked-out commit of %s (%s); set SRCREV" % (repo, e))

# One crate:// entry per registry package of Cargo.lock. Made by scripts/yocto-crates, not by
# `bitbake -c update_crates` (which would add fuzz/Cargo.lock's crates too); CI checks it.
require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd useradd

# The service's user (User=fieldlink in the unit): static, because the D-Bus policy and the
# polkit rule below grant the OTA agent its rights by that name (see the unit).
USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent --shell /sbin/nologin --user-group fieldlink"

# The binary is one package of the workspace; Cargo.lock is the workspace's.
CARGO_SRC_DIR = "crates/fieldlink"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
# SQLite syncs with fdatasync (the workspace's .cargo/config.toml says the same to cargo, which
# may not read it when bitbake builds from another directory): a commit costs ext4 no journal
# commit of its own, which is most of what the queue writes to an SD card (docs/BENCHMARKS.md).
export LIBSQLITE3_FLAGS = "-DHAVE_FDATASYNC=1"

# Serial ports the service may open (a drop-in with one DeviceAllow= each; empty: none).
# They must match the `port =` keys of fieldlink.toml.
FIELDLINK_SERIAL_DEVICES ??= ""

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/fieldlink.service ${D}${systemd_system_unitdir}/fieldlink.service

    # The annotated configuration: every key at its default, so it changes nothing as shipped.
    install -d ${D}${sysconfdir}/fieldlink
    install -m 0644 ${S}/configs/fieldlink.toml ${D}${sysconfdir}/fieldlink/fieldlink.toml

    if [ -n "${FIELDLINK_SERIAL_DEVICES}" ]; then
        install -d ${D}${systemd_system_unitdir}/fieldlink.service.d
        dropin=${D}${systemd_system_unitdir}/fieldlink.service.d/serial.conf
        printf '# Written by the fieldlink recipe from FIELDLINK_SERIAL_DEVICES.\n[Service]\n' > $dropin
        for device in ${FIELDLINK_SERIAL_DEVICES}; do
            printf 'DeviceAllow=%s rw\n' "$device" >> $dropin
        done
    fi

    # The OTA agent's rights: RAUC's calls it makes (D-Bus policy of the user fieldlink), RAUC
    # locked to root and fieldlink (it lets everyone in by itself), logind's Reboot (polkit).
    install -d ${D}${datadir}/dbus-1/system.d ${D}${sysconfdir}/dbus-1/system.d ${D}${datadir}/polkit-1/rules.d
    install -m 0644 ${S}/systemd/dbus/fieldlink.conf ${D}${datadir}/dbus-1/system.d/fieldlink.conf
    install -m 0644 ${S}/systemd/dbus/fieldlink-rauc.conf ${D}${sysconfdir}/dbus-1/system.d/fieldlink-rauc.conf
    install -m 0644 ${S}/systemd/polkit/fieldlink.rules ${D}${datadir}/polkit-1/rules.d/fieldlink.rules

    install -d ${D}${docdir}/fieldlink
    install -m 0644 ${S}/README.md ${D}${docdir}/fieldlink/README.md
    # No state directory in the package: systemd makes it (StateDirectory=fieldlink, that is
    # /var/lib/fieldlink) on the data partition at first start.
}

FILES:${PN} += "${systemd_system_unitdir} ${datadir}/dbus-1/system.d ${datadir}/polkit-1/rules.d"
CONFFILES:${PN} = "${sysconfdir}/fieldlink/fieldlink.toml ${sysconfdir}/dbus-1/system.d/fieldlink-rauc.conf"

SYSTEMD_SERVICE:${PN} = "fieldlink.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

# On a read-only root, oe-core binds a tmpfs over /var/lib. fieldlink-image mounts its data
# partition there instead (files/wic/fieldlink-ab.wks.in): the store-and-forward queue must
# survive a reboot, so /var/lib is left out of the volatile binds.
VOLATILE_BINDS:fieldlink-gateway = "${localstatedir}/volatile/cache ${localstatedir}/cache\n${localstatedir}/volatile/spool ${localstatedir}/spool\n${localstatedir}/volatile/srv ${servicedir}\n"

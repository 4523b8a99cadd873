#!/usr/bin/env bash
# `make bench` compares ingest, reads and DICOMweb with Orthanc 1.10 on the same PostgreSQL server
# (scripts/bench/orthanc.py). Install Debian's packages for it when they are missing and apt can:
# as root, or with passwordless sudo. Otherwise say why the Orthanc rows are skipped; the bench runs
# without them either way (this script always exits 0). ORTHANC_INSTALL=no never installs.
# On a machine with systemd, Debian's orthanc package also starts its own service on port 8042
# (SQLite, not used by the bench): `systemctl disable --now orthanc` if you do not want it.
set -u
packages=(orthanc orthanc-postgresql orthanc-dicomweb)
plugins=/usr/share/orthanc/plugins
have() {
  [ -x /usr/sbin/Orthanc ] && [ -e "$plugins/libOrthancPostgreSQLIndex.so" ] &&
    [ -e "$plugins/libOrthancPostgreSQLStorage.so" ] && [ -e "$plugins/libOrthancDicomWeb.so" ]
}
skip() { echo "bench: Orthanc rows skipped: $*" >&2; exit 0; }

have && exit 0
[ "${ORTHANC_INSTALL:-yes}" = no ] && skip "ORTHANC_INSTALL=no (apt-get install ${packages[*]} to compare)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get here (Orthanc's packages are Debian's and Ubuntu's)"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  skip "installing needs root or passwordless sudo: sudo apt-get install ${packages[*]}"
fi
install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
}
echo "bench: installing ${packages[*]} (Debian's Orthanc, for the side-by-side rows)" >&2
# Package lists may be missing or stale (a fresh container has none): update once, then try again.
install >/dev/null || { "${as_root[@]}" apt-get update -q >/dev/null && install >/dev/null; } ||
  skip "apt-get install ${packages[*]} failed (see above)"
have || skip "installed, but /usr/sbin/Orthanc or a plugin in $plugins is still missing"

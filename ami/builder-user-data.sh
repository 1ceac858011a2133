#!/bin/sh
# User-data of the builder instance `autopaxos ami bake` launches (shutdown behaviour: stop).
# It installs everything the image needs, then powers off; bake then snapshots the stopped builder.
# Instances launched from the image install nothing at boot: systemd starts `autopaxos boot`.
# Placeholders filled in by bake: @BINARY_URL@, and the unit and sysctl files below.
set -eu
exec >/var/log/autopaxos-bake.log 2>&1
echo "autopaxos bake: start $(date -u +%FT%TZ)"

fetch() {
    if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 5 -o "$2" "$1"
    else wget -q -O "$2" "$1"; fi
}
fetch '@BINARY_URL@' /usr/local/bin/autopaxos.download
chmod 755 /usr/local/bin/autopaxos.download
mv /usr/local/bin/autopaxos.download /usr/local/bin/autopaxos
/usr/local/bin/autopaxos --version

cat >/etc/systemd/system/autopaxos.service <<'UNIT'
@UNIT@
UNIT
cat >/etc/sysctl.d/99-autopaxos.conf <<'SYSCTL'
@SYSCTL@
SYSCTL
# Transparent huge pages: madvise, never always (tuning/README.md).
cat >/etc/tmpfiles.d/autopaxos-thp.conf <<'THP'
w /sys/kernel/mm/transparent_hugepage/enabled - - - - madvise
THP
systemctl daemon-reload
systemctl enable autopaxos.service
# Instances from the image must fetch their own user-data: forget this builder's cloud-init state.
if command -v cloud-init >/dev/null 2>&1; then cloud-init clean --logs || true; fi
echo "autopaxos bake: done $(date -u +%FT%TZ)"
sync
poweroff

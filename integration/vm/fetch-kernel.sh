#!/bin/bash
# Fetches the Debian kernel the VM lab boots (it has ipip, which this machine's kernel lacks)
# into /var/cache/reef/vm (or $REEF_VM_DIR), outside any clone, once per machine.
set -euo pipefail
DIR=${REEF_VM_DIR:-/var/cache/reef/vm}
KVER=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: linux-image-\(.*\)$/\1/p' | head -1)
[ -n "$KVER" ] || { echo "fetch-kernel: cannot tell the current Debian kernel (apt-get update?)" >&2; exit 1; }
if [ -f "$DIR/KVER" ] && [ "$(cat "$DIR/KVER")" = "$KVER" ] && [ -f "$DIR/kx/boot/vmlinuz-$KVER" ]; then
  exit 0
fi
mkdir -p "$DIR"; cd "$DIR"
rm -rf kx ./*.deb
apt-get download -q "linux-image-$KVER"
dpkg-deb -x linux-image-"$KVER"_*.deb kx
depmod -b kx "$KVER"     # the .deb ships no modules.dep (its postinst makes it)
rm -f ./*.deb
echo "$KVER" > KVER
echo "fetch-kernel: $KVER in $DIR"

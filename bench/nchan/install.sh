#!/usr/bin/env bash
# Install nginx + the nchan module (Debian bookworm: libnginx-mod-nchan 1:1.3.6)
# for the herald-bench comparison. Idempotent: does nothing if both are present.
# Never leaves the distribution's nginx service running (port 80).
# Prints the path of the nchan module .so on the last line of stdout; the
# benchmark's nginx.conf.template loads it with `load_module` (the Debian
# modules-enabled/ include is not used because the config is standalone).
set -euo pipefail

MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

have_nchan() {
    command -v nginx >/dev/null 2>&1 && [ -f "$MODULE" ]
}

if have_nchan; then
    echo "nginx + nchan already installed: $(nginx -v 2>&1)" >&2
    echo "$MODULE"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (apt-get)" >&2
    exit 1
fi

# Keep the package's postinst from starting nginx on :80. Only install a
# policy-rc.d if there is none (containers usually ship one that exits 101).
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then rm -f "$POLICY"; fi
}
trap cleanup EXIT

apt-get update
# In bookworm the `nginx` package holds the binary; nginx-light/nginx-core are
# metapackages over it (nginx-light only adds the echo module). The nchan
# module depends on nginx-abi-1.22.1-7, which `nginx` provides.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    nginx libnginx-mod-nchan

# Belt and braces: if the service got started anyway, stop and disable it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
else
    if [ -x /etc/init.d/nginx ]; then /etc/init.d/nginx stop >/dev/null 2>&1 || true; fi
    if command -v update-rc.d >/dev/null 2>&1; then update-rc.d nginx disable >/dev/null 2>&1 || true; fi
fi
if [ -s /run/nginx.pid ]; then
    kill -QUIT "$(cat /run/nginx.pid)" 2>/dev/null || true
fi

if ! have_nchan; then
    echo "install.sh: nchan module not found at $MODULE after install" >&2
    exit 1
fi
echo "installed: $(nginx -v 2>&1)" >&2
echo "$MODULE"

# Sourced by the ensure-* scripts: install Debian packages when this machine allows it.
# As root with apt-get, packages are installed (saying which) unless JEWELSHOT_AUTO_INSTALL=0;
# otherwise callers print the exact command instead.

can_apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${JEWELSHOT_AUTO_INSTALL:-1}" != 0 ]
}

apt_updated=false
apt_install() { # package…
  echo "installing $* (apt-get, as root; JEWELSHOT_AUTO_INSTALL=0 to say no)…"
  if ! $apt_updated; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

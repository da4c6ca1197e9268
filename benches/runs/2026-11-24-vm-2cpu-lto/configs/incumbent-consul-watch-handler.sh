#!/bin/sh
# consul watch handler: the key's JSON entry on stdin; install the
# matching config and reload HAProxy (SIGUSR2 to the master).
value=$(sed -n 's/.*"Value":"\([^"]*\)".*/\1/p' | base64 -d 2>/dev/null)
case "$value" in
  *'"maintenance"'*) cp RUN_DIR/fleet1-haproxy0-133/maintenance.cfg RUN_DIR/fleet1-haproxy0-133/haproxy.cfg.new ;;
  *) cp RUN_DIR/fleet1-haproxy0-133/normal.cfg RUN_DIR/fleet1-haproxy0-133/haproxy.cfg.new ;;
esac
mv RUN_DIR/fleet1-haproxy0-133/haproxy.cfg.new RUN_DIR/fleet1-haproxy0-133/haproxy.cfg
kill -USR2 21730

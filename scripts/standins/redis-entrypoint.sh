#!/bin/sh
# docker-entrypoint.sh of the redis:7 stand-in that scripts/test-env seeds (Debian's
# redis-server 7.0, no registry needed). As the official image does:
#   - a first argument that is an option or a *.conf file means "redis-server with these";
#   - redis-server runs as the redis user (uid 999) in /data, which it is given first;
#   - protected mode is off unless a config file or an argument turns it on: the official image
#     compiles that default in, Debian's binary has it on, so it is passed here instead;
#   - a umask of 0077 unless another than the default was set.
set -eu

case "${1:-}" in
    -* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis '{}' +
    export HOME=/data
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$(umask)" = 0022 ]; then
    umask 0077
fi

if [ "${1:-}" = redis-server ]; then
    shift
    case "${1:-}" in
        -v | --version | -h | --help | --test-memory | --check-system) exec redis-server "$@" ;;
    esac
    # Options given on the command line come after the config file and override it; ours goes
    # right after the file so that the caller's own --protected-mode still wins.
    if [ $# -gt 0 ] && { [ "$1" = - ] || [ "${1#-}" = "$1" ]; }; then
        conf=$1
        shift
        if [ -f "$conf" ] && grep -qiE '^[[:space:]]*protected-mode[[:space:]]' "$conf"; then
            exec redis-server "$conf" "$@"
        fi
        exec redis-server "$conf" --protected-mode no "$@"
    fi
    exec redis-server --protected-mode no "$@"
fi

exec "$@"

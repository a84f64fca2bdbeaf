#!/bin/sh
# healthcheck.sh of the mariadb:10.11 stand-in: the tests the official image's healthcheck.sh
# offers that a single server needs, with the same options and exit status (0 = healthy).
#
#   --connect                   the server accepts TCP connections (a refused login counts:
#                               it answered)
#   --innodb_initialized        InnoDB finished its start (crash recovery included)
#   --innodb_buffer_pool_loaded the buffer pool load at start-up completed
#   --su-mysql, --su=USER       run the rest as that user
#   --datadir=DIR, --defaults-file=F, --defaults-extra-file=F, --no-defaults, --no-connect
#
# Tests run in the order given; unless one of them was --connect (or --no-connect was given),
# a connect test runs last. Credentials come from $datadir/.my-healthcheck.cnf, which the
# entrypoint writes.
set -eu

datadir=/var/lib/mysql
defaults=""
connected=""

sql() {  # a query on the socket, printing the bare result
    # shellcheck disable=SC2086  # $defaults is one option or none
    mariadb $defaults --protocol socket -B --skip-column-names -e "$1"
}

connect() {
    # shellcheck disable=SC2086
    if _out=$(mariadb $defaults -h localhost --protocol tcp --skip-column-names --batch \
        -e 'select @@skip_networking' 2>&1); then
        [ "$_out" = 0 ]
        return
    fi
    case "$_out" in
        *'(28000)'* | *'ERROR 1820'* | *'ERROR 4151'* | *'ERROR 1226'*) return 0 ;;  # it answered
        *) return 1 ;;
    esac
}

innodb_initialized() {
    [ "$(sql "select 1 from information_schema.ENGINES WHERE engine='innodb' AND support in ('YES', 'DEFAULT', 'ENABLED')")" = 1 ]
}

innodb_buffer_pool_loaded() {
    case "$(sql "select VARIABLE_VALUE from information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='Innodb_buffer_pool_load_status'")" in
        *'load completed'*) return 0 ;;
        *) return 1 ;;
    esac
}

if [ $# -eq 0 ]; then
    echo "At least one argument required" >&2
    exit 1
fi

for _arg; do
    case "$_arg" in
        --datadir=*) datadir=${_arg#*=} ;;
    esac
done
[ -f "$datadir/.my-healthcheck.cnf" ] && defaults="--defaults-extra-file=$datadir/.my-healthcheck.cnf"

while [ $# -gt 0 ]; do
    test_name=""
    case "$1" in
        --su-mysql) shift; exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@" ;;
        --su=*) _user=${1#*=}; shift; exec setpriv --reuid="$_user" --regid="$_user" --init-groups "$0" "$@" ;;
        --datadir=*) ;;
        --no-defaults) defaults="--no-defaults" ;;
        --defaults-file=* | --defaults-extra-file=*) defaults=$1 ;;
        --no-connect) connected=0 ;;
        --connect | --innodb_initialized | --innodb_buffer_pool_loaded) test_name=${1#--} ;;
        --*) echo "healthcheck unknown option or test '${1#--}'" >&2; exit 1 ;;
        *) echo "Unknown healthcheck option $1" >&2; exit 1 ;;
    esac
    if [ -n "$test_name" ]; then
        if ! "$test_name"; then
            echo "healthcheck $test_name failed" >&2
            exit 1
        fi
        [ "$test_name" = connect ] && connected=0
    fi
    shift
done

if [ "$connected" != 0 ]; then
    connect
fi

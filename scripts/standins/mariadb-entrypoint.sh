#!/bin/sh
# docker-entrypoint.sh of the mariadb:10.11 stand-in that scripts/test-env seeds (Debian's
# mariadb-server 10.11, no registry needed). It keeps the environment contract documented for
# the official image, so whatever lbsolo does with it works the same against mariadb:10.11:
#
#   one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, MARIADB_RANDOM_ROOT_PASSWORD
#                         is required on an empty data directory; root may log in from any host
#                         (MARIADB_ROOT_HOST, default %)
#   MARIADB_DATABASE      a database created at initialisation
#   MARIADB_USER, MARIADB_PASSWORD   a user (from MARIADB_USER_HOST, default %) with every right
#                         on MARIADB_DATABASE
#   MARIADB_INITDB_SKIP_TZINFO       skip loading the time zone tables
#   the MYSQL_* spellings and *_FILE variants of these
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz  run once after initialisation
#
# It also creates the healthcheck users and $DATADIR/.my-healthcheck.cnf that healthcheck.sh
# reads. Started as root, it prepares the directories and runs the server as mysql (uid 999).
set -eu

note() { printf '%s [Note] [Entrypoint]: %s\n' "$(date '+%F %T')" "$*"; }
error() {
    printf '%s [ERROR] [Entrypoint]: %s\n' "$(date '+%F %T')" "$*" >&2
    exit 1
}

# file_env VAR [DEFAULT]: VAR from itself, else from the file named by VAR_FILE, else DEFAULT.
file_env() {
    eval "_val=\${$1:-} _file=\${$1_FILE:-}"
    if [ -n "$_val" ] && [ -n "$_file" ]; then
        error "Both $1 and $1_FILE are set (but are exclusive)"
    fi
    if [ -z "$_val" ]; then
        if [ -n "$_file" ]; then _val=$(cat "$_file"); else _val=${2:-}; fi
    fi
    export "$1=$_val"
    unset "$1_FILE"
}

# MARIADB_X, falling back to MYSQL_X; both end up with the same value.
mariadb_env() {  # $1 = X, $2 = default
    file_env "MYSQL_$1" "${2:-}"
    eval "_mysql=\$MYSQL_$1"
    file_env "MARIADB_$1" "$_mysql"
    eval "export MYSQL_$1=\$MARIADB_$1"
}

wants_help() {
    for _arg; do
        case "$_arg" in
            '-?' | --help | --print-defaults | -V | --version) return 0 ;;
        esac
    done
    return 1
}

# A value the server reports with its defaults and config files applied.
server_config() {  # $1 = name, rest = the server's command
    _name=$1
    shift
    "$@" --verbose --help 2>/dev/null \
        | awk -v name="$_name" '$1 == name && /^[^ \t]/ { sub(/^[^ \t]+[ \t]+/, ""); print; exit }'
}

# Escape $1 for a single-quoted SQL string literal.
sql_string() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g"; }

random_password() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32; }

client() {  # the mariadb client on the socket, as root
    if [ -n "$MARIADB_DATABASE" ]; then
        set -- --database="$MARIADB_DATABASE" "$@"
    fi
    mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" "$@"
}

process_sql() {  # [--no-root-password] client arguments; SQL on stdin
    if [ "${1:-}" = --no-root-password ]; then
        shift
        MYSQL_PWD='' client "$@"
    else
        MYSQL_PWD=$MARIADB_ROOT_PASSWORD client "$@"
    fi
}

create_directories() {
    mkdir -p "$DATADIR"
    if [ "$(id -u)" = 0 ]; then
        find "$DATADIR" \! -user mysql -exec chown mysql: '{}' +
        case "$SOCKET" in
            @*) ;;  # an abstract socket has no directory
            *) find "${SOCKET%/*}" -maxdepth 0 \! -user mysql -exec chown mysql: '{}' \; ;;
        esac
    fi
}

verify_minimum_env() {
    if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] \
        && [ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
        error "Database is uninitialized and password option is not specified
	You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD"
    fi
}

init_database_dir() {  # "$@" = the server's command
    note "Initializing database files"
    shift
    mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal "$@" \
        --cross-bootstrap --skip-test-db --old-mode=UTF8_IS_UTF8MB3 \
        --default-time-zone=SYSTEM --enforce-storage-engine= --skip-log-bin --expire-logs-days=0 \
        --loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0
    note "Database files initialized"
}

# The server on its socket only, for the set-up.
temp_server_start() {  # "$@" = the server's command
    "$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --wsrep_on=OFF \
        --expire-logs-days=0 --skip-slave-start --loose-innodb_buffer_pool_load_at_startup=0 &
    SERVER_PID=$!
    note "Waiting for server startup"
    _i=0
    until echo 'SELECT 1' | process_sql --no-root-password --database=mysql >/dev/null 2>&1; do
        _i=$((_i + 1))
        [ "$_i" -le 30 ] || error "Unable to start server."
        kill -0 "$SERVER_PID" 2>/dev/null || error "Unable to start server."
        sleep 1
    done
}

temp_server_stop() {
    kill "$SERVER_PID"
    wait "$SERVER_PID"
}

healthcheck_users_sql() {  # writes $DATADIR/.my-healthcheck.cnf, prints the SQL creating its users
    _pass=$(random_password)
    for _host in 127.0.0.1 ::1 localhost; do
        printf "CREATE USER IF NOT EXISTS healthcheck@'%s' IDENTIFIED BY '%s';\n" "$_host" "$_pass"
        printf "SET PASSWORD FOR healthcheck@'%s' = PASSWORD('%s');\n" "$_host" "$_pass"
        printf "GRANT %s ON *.* TO healthcheck@'%s';\n" "${MARIADB_HEALTHCHECK_GRANTS:-USAGE}" "$_host"
    done
    (
        umask 0077
        printf '[mariadb-client]\nport=%s\nsocket=%s\nuser=healthcheck\npassword=%s\n' \
            "$PORT" "$SOCKET" "$_pass" >"$DATADIR/.my-healthcheck.cnf"
    )
}

setup_db() {
    if [ -z "$MARIADB_INITDB_SKIP_TZINFO" ] && [ -d /usr/share/zoneinfo ]; then
        mariadb-tzinfo-to-sql --skip-write-binlog /usr/share/zoneinfo 2>/dev/null \
            | process_sql --no-root-password --database=mysql
    fi
    if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
        MARIADB_ROOT_PASSWORD=$(random_password)
        export MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD="$MARIADB_ROOT_PASSWORD"
        note "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
    fi
    _root=$(sql_string "$MARIADB_ROOT_PASSWORD")
    _sql_file=$(mktemp)
    # printf, not echo: dash's echo would turn a password's backslashes into escapes
    {
        printf '%s\n' "SET @orig_sql_log_bin= @@SESSION.SQL_LOG_BIN;"
        printf '%s\n' "SET @@SESSION.SQL_LOG_BIN=0;"
        printf '%s\n' "SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');"
        printf '%s\n' "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';"
        printf '%s\n' "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname,'\\'');"
        printf '%s\n' "SET PASSWORD FOR 'root'@'localhost'= PASSWORD('$_root');"
        if [ -n "$MARIADB_ROOT_HOST" ] && [ "$MARIADB_ROOT_HOST" != localhost ]; then
            printf '%s\n' "CREATE USER 'root'@'$MARIADB_ROOT_HOST' IDENTIFIED BY '$_root';"
            printf '%s\n' "GRANT ALL ON *.* TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;"
            printf '%s\n' "GRANT PROXY ON ''@'%' TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;"
        fi
        healthcheck_users_sql
        printf '%s\n' "SET @@SESSION.SQL_LOG_BIN=@orig_sql_log_bin;"
        if [ -n "$MARIADB_DATABASE" ]; then
            note "Creating database $MARIADB_DATABASE" >&2
            printf '%s\n' "CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
        fi
        if [ -n "$MARIADB_USER" ] && [ -n "$MARIADB_PASSWORD" ]; then
            note "Creating user $MARIADB_USER" >&2
            printf '%s\n' "CREATE USER '$MARIADB_USER'@'$MARIADB_USER_HOST' IDENTIFIED BY '$(sql_string "$MARIADB_PASSWORD")';"
            if [ -n "$MARIADB_DATABASE" ]; then
                # _ is a wildcard in a grant's database name
                _db=$(printf '%s' "$MARIADB_DATABASE" | sed 's/_/\\_/g')
                printf '%s\n' "GRANT ALL ON \`$_db\`.* TO '$MARIADB_USER'@'$MARIADB_USER_HOST';"
            fi
        fi
    } >"$_sql_file"
    note "Securing system users (equivalent to running mysql_secure_installation)"
    process_sql --no-root-password --database=mysql --binary-mode <"$_sql_file"
    rm -f "$_sql_file"
}

process_init_files() {
    for _f in /docker-entrypoint-initdb.d/*; do
        case "$_f" in
            *.sh)
                if [ -x "$_f" ]; then
                    note "$0: running $_f"
                    "$_f"
                else
                    note "$0: sourcing $_f"
                    . "$_f"
                fi
                ;;
            *.sql) note "$0: running $_f"; process_sql <"$_f" ;;
            *.sql.gz) note "$0: running $_f"; gunzip -c "$_f" | process_sql ;;
            *.sql.xz) note "$0: running $_f"; xzcat "$_f" | process_sql ;;
            */\*) ;;
            *) note "$0: ignoring $_f" ;;
        esac
    done
}

# A first argument that is an option means "mariadbd with these options".
case "${1:-}" in -*) set -- mariadbd "$@" ;; esac

if { [ "${1:-}" = mariadbd ] || [ "${1:-}" = mysqld ]; } && ! wants_help "$@"; then
    note "Entrypoint script for MariaDB Server $(dpkg-query -W -f '${Version}' mariadb-server 2>/dev/null || :) started."
    if ! _errors=$("$@" --verbose --help 2>&1 >/dev/null); then
        error "mariadbd failed while attempting to check config
	command was: $* --verbose --help
	$_errors"
    fi
    DATADIR=$(server_config datadir "$@")
    DATADIR=${DATADIR%/}
    SOCKET=$(server_config socket "$@")
    PORT=$(server_config port "$@")
    mariadb_env ROOT_HOST '%'
    mariadb_env DATABASE
    mariadb_env USER
    mariadb_env PASSWORD
    mariadb_env ROOT_PASSWORD
    file_env MARIADB_USER_HOST '%'
    : "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:=${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
    : "${MARIADB_RANDOM_ROOT_PASSWORD:=${MYSQL_RANDOM_ROOT_PASSWORD:-}}"
    : "${MARIADB_INITDB_SKIP_TZINFO:=${MYSQL_INITDB_SKIP_TZINFO:-}}"
    export MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MARIADB_RANDOM_ROOT_PASSWORD MARIADB_INITDB_SKIP_TZINFO
    create_directories
    if [ "$(id -u)" = 0 ]; then
        note "Switching to dedicated user 'mysql'"
        export HOME=/var/lib/mysql
        exec setpriv --reuid=mysql --regid=mysql --init-groups "$0" "$@"
    fi
    if [ ! -d "$DATADIR/mysql" ]; then
        verify_minimum_env
        ls /docker-entrypoint-initdb.d/ >/dev/null
        init_database_dir "$@"
        note "Starting temporary server"
        temp_server_start "$@"
        note "Temporary server started."
        setup_db
        process_init_files
        note "Stopping temporary server"
        temp_server_stop
        note "Temporary server stopped"
        note "MariaDB init process done. Ready for start up."
    fi
    unset MARIADB_ROOT_PASSWORD MARIADB_PASSWORD MYSQL_ROOT_PASSWORD MYSQL_PASSWORD \
        MARIADB_ROOT_HOST MYSQL_ROOT_HOST
fi

exec "$@"

#!/bin/sh
# docker-entrypoint.sh of the postgres:15 and postgres:17 stand-ins that scripts/test-env seeds
# (Debian's postgresql-N, no registry needed). It keeps the environment contract documented for
# the official image, so whatever lbsolo does with these works the same against postgres:N:
#
#   POSTGRES_PASSWORD   the superuser's password; required on an empty data directory unless
#                       POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER       the superuser (default postgres)
#   POSTGRES_DB         a database created at initialisation (default: POSTGRES_USER)
#   POSTGRES_INITDB_ARGS, POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD (default: the
#                       server's password_encryption, scram-sha-256), PGDATA, and *_FILE
#                       variants of the first three
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz  run once after initialisation
#
# As in the official image: connections over the unix socket and from the container's own
# loopback are trusted (initdb's default), every other host must authenticate; started as root,
# it prepares the directories and runs the server as the postgres user (uid 999).
set -eu

# file_env VAR [DEFAULT]: VAR from itself, else from the file named by VAR_FILE, else DEFAULT.
file_env() {
    eval "_val=\${$1:-} _file=\${$1_FILE:-}"
    if [ -n "$_val" ] && [ -n "$_file" ]; then
        echo "error: both $1 and $1_FILE are set (but are exclusive)" >&2
        exit 1
    fi
    if [ -z "$_val" ]; then
        if [ -n "$_file" ]; then _val=$(cat "$_file"); else _val=${2:-}; fi
    fi
    export "$1=$_val"
    unset "$1_FILE"
}

wants_help() {
    for _arg; do
        case "$_arg" in
            '-?' | --help | --describe-config | -V | --version) return 0 ;;
        esac
    done
    return 1
}

# Quote each argument for the shell that pg_ctl runs postgres through.
shell_quote() {
    for _arg; do
        printf "'%s' " "$(printf '%s' "$_arg" | sed "s/'/'\\\\''/g")"
    done
}

create_directories() {
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    mkdir -p /var/run/postgresql || :
    chmod 03775 /var/run/postgresql || :
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        chmod 700 "$POSTGRES_INITDB_WALDIR"
    fi
    if [ "$(id -u)" = 0 ]; then
        for _dir in "$PGDATA" /var/run/postgresql ${POSTGRES_INITDB_WALDIR:+"$POSTGRES_INITDB_WALDIR"}; do
            find "$_dir" \! -user postgres -exec chown postgres '{}' +
        done
    fi
}

verify_minimum_env() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'EOF'
Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".

       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all
       connections without a password. This is *not* recommended.
EOF
        exit 1
    fi
    if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
        echo 'WARNING: POSTGRES_HOST_AUTH_METHOD=trust lets anyone who reaches the port in without a password.' >&2
    fi
}

init_database_dir() {
    _pwfile=$(mktemp)
    # initdb refuses an empty password file, hence the newline.
    printf '%s\n' "$POSTGRES_PASSWORD" >"$_pwfile"
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        set -- --waldir "$POSTGRES_INITDB_WALDIR" "$@"
    fi
    # POSTGRES_INITDB_ARGS is word-split by the shell, as the official image does.
    eval 'initdb --username="$POSTGRES_USER" --pwfile="$_pwfile" '"${POSTGRES_INITDB_ARGS:-}"' "$@"'
    rm -f "$_pwfile"
}

# Every host other than the container itself authenticates with the server's password method.
setup_hba_conf() {  # "$@" = the server's arguments
    [ "${1:-}" = postgres ] && shift
    if [ -z "$POSTGRES_HOST_AUTH_METHOD" ]; then
        POSTGRES_HOST_AUTH_METHOD=$(postgres -C password_encryption "$@")
    fi
    {
        printf '\n'
        [ "$POSTGRES_HOST_AUTH_METHOD" = trust ] && printf '# warning trust is enabled for all connections\n'
        printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >>"$PGDATA/pg_hba.conf"
}

process_sql() {
    PGHOST='' PGHOSTADDR='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

# A server on the unix socket only, for the set-up.
temp_server_start() {  # "$@" = the server's arguments
    [ "${1:-}" = postgres ] && shift
    _opts="$(shell_quote "$@") -c listen_addresses='' -p ${PGPORT:-5432}"
    NOTIFY_SOCKET='' PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$_opts" -w start
}

temp_server_stop() {
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -m fast -w stop
}

setup_db() {
    _exists=$(process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<'EOF'
SELECT 1 FROM pg_database WHERE datname = :'db' ;
EOF
)
    if [ -z "$(echo "$_exists" | tr -d '[:space:]')" ]; then
        process_sql --dbname postgres --set db="$POSTGRES_DB" <<'EOF'
CREATE DATABASE :"db" ;
EOF
    fi
}

process_init_files() {
    for _f in /docker-entrypoint-initdb.d/*; do
        case "$_f" in
            *.sh)
                if [ -x "$_f" ]; then
                    echo "$0: running $_f"
                    "$_f"
                else
                    echo "$0: sourcing $_f"
                    . "$_f"
                fi
                ;;
            *.sql) echo "$0: running $_f"; process_sql --dbname "$POSTGRES_DB" -f "$_f" ;;
            *.sql.gz) echo "$0: running $_f"; gunzip -c "$_f" | process_sql --dbname "$POSTGRES_DB" ;;
            *.sql.xz) echo "$0: running $_f"; xzcat "$_f" | process_sql --dbname "$POSTGRES_DB" ;;
            */\*) ;;
            *) echo "$0: ignoring $_f" ;;
        esac
    done
}

# A first argument that is an option means "postgres with these options".
case "${1:-}" in -*) set -- postgres "$@" ;; esac

if [ "${1:-}" = postgres ] && ! wants_help "$@"; then
    : "${PGDATA:=/var/lib/postgresql/data}"
    export PGDATA
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    create_directories
    if [ "$(id -u)" = 0 ]; then
        export HOME=/var/lib/postgresql
        exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        verify_minimum_env
        ls /docker-entrypoint-initdb.d/ >/dev/null
        init_database_dir
        setup_hba_conf "$@"
        export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
        temp_server_start "$@"
        setup_db
        process_init_files
        temp_server_stop
        unset PGPASSWORD
        printf '\nPostgreSQL init process complete; ready for start up.\n\n'
    else
        printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
    fi
fi

exec "$@"

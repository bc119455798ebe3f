"""MySQL/MariaDB error codes shared by the asyncmy and PyMySQL connectors, without importing either
driver (so ``poolwarden[pymysql]`` works without asyncmy, and ``poolwarden[mysql]`` without PyMySQL)."""

__all__ = ["DISCONNECT_CODES"]

# the server ended the session, or the connection cannot be trusted any more
DISCONNECT_CODES = frozenset({
    1053,  # ER_SERVER_SHUTDOWN
    1152, 1158, 1159, 1160, 1161, 1184,  # aborted connection, network read/write errors
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2002, 2003,  # CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR: cannot reach the server
    2006,  # CR_SERVER_GONE_ERROR
    2013,  # CR_SERVER_LOST
    2014,  # CR_COMMANDS_OUT_OF_SYNC: the stream is desynced, the connection cannot be trusted
    2055,  # CR_SERVER_LOST_EXTENDED
    3169,  # ER_SESSION_WAS_KILLED (MySQL 8)
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT: closed by the server after wait_timeout (MySQL 8)
})

//! Numeric constants of the MySQL/MariaDB client/server protocol: capability flags, server status
//! flags, command bytes, packet markers and column types. Values only, no behaviour.

// ---- capability flags (lower 32 bits; MariaDB's extended flags are shifted up by 32) ----
pub const CLIENT_LONG_PASSWORD: u32 = 1; // MariaDB calls bit 0 CLIENT_MYSQL
pub const CLIENT_FOUND_ROWS: u32 = 1 << 1;
pub const CLIENT_LONG_FLAG: u32 = 1 << 2;
pub const CLIENT_CONNECT_WITH_DB: u32 = 1 << 3;
pub const CLIENT_NO_SCHEMA: u32 = 1 << 4;
pub const CLIENT_COMPRESS: u32 = 1 << 5;
pub const CLIENT_ODBC: u32 = 1 << 6;
pub const CLIENT_LOCAL_FILES: u32 = 1 << 7;
pub const CLIENT_IGNORE_SPACE: u32 = 1 << 8;
pub const CLIENT_PROTOCOL_41: u32 = 1 << 9;
pub const CLIENT_INTERACTIVE: u32 = 1 << 10;
pub const CLIENT_SSL: u32 = 1 << 11;
pub const CLIENT_IGNORE_SIGPIPE: u32 = 1 << 12;
pub const CLIENT_TRANSACTIONS: u32 = 1 << 13;
pub const CLIENT_RESERVED: u32 = 1 << 14;
pub const CLIENT_SECURE_CONNECTION: u32 = 1 << 15;
pub const CLIENT_MULTI_STATEMENTS: u32 = 1 << 16;
pub const CLIENT_MULTI_RESULTS: u32 = 1 << 17;
pub const CLIENT_PS_MULTI_RESULTS: u32 = 1 << 18;
pub const CLIENT_PLUGIN_AUTH: u32 = 1 << 19;
pub const CLIENT_CONNECT_ATTRS: u32 = 1 << 20;
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 1 << 21;
pub const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
pub const CLIENT_SESSION_TRACK: u32 = 1 << 23;
pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
pub const CLIENT_ZSTD_COMPRESSION_ALGORITHM: u32 = 1 << 26;
pub const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
pub const CLIENT_MULTI_FACTOR_AUTHENTICATION: u32 = 1 << 28;
pub const CLIENT_SSL_VERIFY_SERVER_CERT: u32 = 1 << 30;
pub const CLIENT_REMEMBER_OPTIONS: u32 = 1 << 31;

// MariaDB extended capabilities (the 4 bytes MariaDB puts in the greeting's filler and the
// response's filler when CLIENT_LONG_PASSWORD/CLIENT_MYSQL is clear). Bit numbers within those 4 bytes.
pub const MARIADB_CLIENT_PROGRESS: u32 = 1;
pub const MARIADB_CLIENT_COM_MULTI: u32 = 1 << 1;
pub const MARIADB_CLIENT_STMT_BULK_OPERATIONS: u32 = 1 << 2;
pub const MARIADB_CLIENT_EXTENDED_TYPE_INFO: u32 = 1 << 3;
pub const MARIADB_CLIENT_CACHE_METADATA: u32 = 1 << 4;

// ---- server status flags ----
pub const SERVER_STATUS_IN_TRANS: u16 = 1;
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 1 << 1;
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 1 << 3;
pub const SERVER_QUERY_NO_GOOD_INDEX_USED: u16 = 1 << 4;
pub const SERVER_QUERY_NO_INDEX_USED: u16 = 1 << 5;
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 1 << 6;
pub const SERVER_STATUS_LAST_ROW_SENT: u16 = 1 << 7;
pub const SERVER_STATUS_DB_DROPPED: u16 = 1 << 8;
pub const SERVER_STATUS_NO_BACKSLASH_ESCAPES: u16 = 1 << 9;
pub const SERVER_STATUS_METADATA_CHANGED: u16 = 1 << 10;
pub const SERVER_QUERY_WAS_SLOW: u16 = 1 << 11;
pub const SERVER_PS_OUT_PARAMS: u16 = 1 << 12;
pub const SERVER_STATUS_IN_TRANS_READONLY: u16 = 1 << 13;
pub const SERVER_SESSION_STATE_CHANGED: u16 = 1 << 14;

// ---- command bytes ----
pub const COM_SLEEP: u8 = 0x00;
pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_CREATE_DB: u8 = 0x05;
pub const COM_DROP_DB: u8 = 0x06;
pub const COM_REFRESH: u8 = 0x07;
pub const COM_SHUTDOWN: u8 = 0x08;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PROCESS_INFO: u8 = 0x0a;
pub const COM_CONNECT: u8 = 0x0b;
pub const COM_PROCESS_KILL: u8 = 0x0c;
pub const COM_DEBUG: u8 = 0x0d;
pub const COM_PING: u8 = 0x0e;
pub const COM_TIME: u8 = 0x0f;
pub const COM_DELAYED_INSERT: u8 = 0x10;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_BINLOG_DUMP: u8 = 0x12;
pub const COM_TABLE_DUMP: u8 = 0x13;
pub const COM_CONNECT_OUT: u8 = 0x14;
pub const COM_REGISTER_SLAVE: u8 = 0x15;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1a;
pub const COM_SET_OPTION: u8 = 0x1b;
pub const COM_STMT_FETCH: u8 = 0x1c;
pub const COM_DAEMON: u8 = 0x1d;
pub const COM_BINLOG_DUMP_GTID: u8 = 0x1e;
pub const COM_RESET_CONNECTION: u8 = 0x1f;
pub const COM_STMT_BULK_EXECUTE: u8 = 0xfa;

// ---- packet markers (first payload byte) ----
pub const OK_HEADER: u8 = 0x00;
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;
pub const LOCAL_INFILE_HEADER: u8 = 0xfb;
pub const EOF_HEADER: u8 = 0xfe;
pub const AUTH_SWITCH_HEADER: u8 = 0xfe;
pub const ERR_HEADER: u8 = 0xff;

/// Largest payload of one physical packet; a payload of this size is continued by the next packet.
pub const MAX_PAYLOAD_LEN: usize = 0xff_ffff;
/// Bytes in a packet header (3 length + 1 sequence id).
pub const HEADER_LEN: usize = 4;

// ---- error codes the proxy itself sends ----
pub const ER_CON_COUNT_ERROR: u16 = 1040; // Too many connections
pub const ER_HANDSHAKE_ERROR: u16 = 1043; // Bad handshake
pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
pub const ER_NET_READ_ERROR: u16 = 1158;
pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
pub const CR_CONN_HOST_ERROR: u16 = 2003; // Can't connect to MySQL server
pub const CR_SERVER_LOST: u16 = 2013;
pub const ER_SERVER_SHUTDOWN: u16 = 1053;
/// The proxy could not reach a backend (ProxySQL uses the same code). Client-range codes
/// (2000-2999) cannot be used before the greeting: libmariadb reports them as malformed packets.
pub const ER_PROXY_BACKEND_UNREACHABLE: u16 = 9001;

// ---- column types ----
/// Column definition flag: an unsigned numeric column.
pub const UNSIGNED_FLAG: u16 = 0x20;

pub const MYSQL_TYPE_DECIMAL: u8 = 0x00;
pub const MYSQL_TYPE_TINY: u8 = 0x01;
pub const MYSQL_TYPE_SHORT: u8 = 0x02;
pub const MYSQL_TYPE_LONG: u8 = 0x03;
pub const MYSQL_TYPE_FLOAT: u8 = 0x04;
pub const MYSQL_TYPE_DOUBLE: u8 = 0x05;
pub const MYSQL_TYPE_NULL: u8 = 0x06;
pub const MYSQL_TYPE_TIMESTAMP: u8 = 0x07;
pub const MYSQL_TYPE_LONGLONG: u8 = 0x08;
pub const MYSQL_TYPE_INT24: u8 = 0x09;
pub const MYSQL_TYPE_DATE: u8 = 0x0a;
pub const MYSQL_TYPE_TIME: u8 = 0x0b;
pub const MYSQL_TYPE_DATETIME: u8 = 0x0c;
pub const MYSQL_TYPE_YEAR: u8 = 0x0d;
pub const MYSQL_TYPE_VARCHAR: u8 = 0x0f;
pub const MYSQL_TYPE_BIT: u8 = 0x10;
pub const MYSQL_TYPE_JSON: u8 = 0xf5;
pub const MYSQL_TYPE_NEWDECIMAL: u8 = 0xf6;
pub const MYSQL_TYPE_ENUM: u8 = 0xf7;
pub const MYSQL_TYPE_SET: u8 = 0xf8;
pub const MYSQL_TYPE_TINY_BLOB: u8 = 0xf9;
pub const MYSQL_TYPE_MEDIUM_BLOB: u8 = 0xfa;
pub const MYSQL_TYPE_LONG_BLOB: u8 = 0xfb;
pub const MYSQL_TYPE_BLOB: u8 = 0xfc;
pub const MYSQL_TYPE_VAR_STRING: u8 = 0xfd;
pub const MYSQL_TYPE_STRING: u8 = 0xfe;
pub const MYSQL_TYPE_GEOMETRY: u8 = 0xff;

-- A MySQL server written in Lua: no backend at all. connect_server answers with a greeting the
-- script makes, read_auth accepts every login, read_query answers every query with a resultset
-- (or an OK for statements that return none). Useful for tests and for trying clients.
--
--   ringproxy --proxy-lua-script scripts/lua/mock-server.lua --backend 127.0.0.1:1   (never used)
local proto = require("mysql.proto")

function connect_server()
  proxy.response = {
    type = proxy.MYSQLD_PACKET_RAW,
    packets = { proto.to_challenge_packet({ server_version = 50099, thread_id = 1 }) },
  }
  return proxy.PROXY_SEND_RESULT
end

function read_auth()
  proxy.response = { type = proxy.MYSQLD_PACKET_OK }
  return proxy.PROXY_SEND_RESULT
end

function read_query(packet)
  local cmd = packet:byte()
  if cmd == proxy.COM_QUIT then
    return -- no decision: without a backend the connection just ends
  end
  if cmd ~= proxy.COM_QUERY then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  local query = packet:sub(2)
  local var = query:lower():match("^%s*select%s+@@([%w_.]+)%s*$")
  if var then -- what drivers ask after their login
    local values = { max_allowed_packet = "16777216", version_comment = "ringproxy Lua mock server" }
    proxy.response = {
      type = proxy.MYSQLD_PACKET_OK,
      resultset = { fields = { { name = "@@" .. var } }, rows = { { values[var] or "" } } },
    }
    return proxy.PROXY_SEND_RESULT
  end
  if query:lower():match("^%s*set ") then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK }
    return proxy.PROXY_SEND_RESULT
  end
  if query:lower():match("^%s*fail") then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "you asked for it", errcode = 1064, sqlstate = "42000" }
    return proxy.PROXY_SEND_RESULT
  end
  proxy.response = {
    type = proxy.MYSQLD_PACKET_OK,
    resultset = {
      fields = { { name = "query", type = proxy.MYSQL_TYPE_STRING }, { name = "length", type = proxy.MYSQL_TYPE_LONG } },
      rows = { { query, #query }, { "null below", nil } },
    },
  }
  return proxy.PROXY_SEND_RESULT
end

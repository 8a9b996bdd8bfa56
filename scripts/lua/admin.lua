-- Custom admin statements answered by the proxy with generated resultsets; everything else goes
-- to the server unchanged.
--   SHOW PROXY BACKENDS      the backends (proxy.global.backends)
--   SHOW PROXY CONNECTION    what the proxy knows of this connection (proxy.connection)
--   SELECT PROXY_VERSION()   the hook API level scripts see

local function resultset(fields, rows)
  local f = {}
  for i, name in ipairs(fields) do f[i] = { name = name, type = proxy.MYSQL_TYPE_VAR_STRING } end
  proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = { fields = f, rows = rows } }
  return proxy.PROXY_SEND_RESULT
end

local answers = {
  ["show proxy backends"] = function()
    local rows = {}
    local backends = proxy.global.backends
    for i = 1, #backends do
      local b = backends[i]
      rows[i] = { i, b.dst.name, b.state == proxy.BACKEND_STATE_UP and "up" or "down",
                  b.type == proxy.BACKEND_TYPE_RO and "ro" or "rw", b.connected_clients }
    end
    return resultset({ "ndx", "address", "state", "type", "connected_clients" }, rows)
  end,
  ["show proxy connection"] = function()
    local c, s = proxy.connection.client, proxy.connection.server
    return resultset({ "name", "value" }, {
      { "client.src.name", c.src.name }, { "client.username", c.username },
      { "client.default_db", c.default_db }, { "server.dst.name", s.dst.name },
      { "server.thread_id", s.thread_id }, { "server.mysqld_version", s.mysqld_version },
      { "backend_ndx", proxy.connection.backend_ndx },
    })
  end,
  ["select proxy_version()"] = function()
    return resultset({ "proxy_version" }, { { string.format("%x", proxy.PROXY_VERSION) } })
  end,
}

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local q = packet:sub(2):lower():gsub("^%s+", ""):gsub("[%s;]+$", ""):gsub("%s+", " ")
  local answer = answers[q]
  if answer then return answer() end
end

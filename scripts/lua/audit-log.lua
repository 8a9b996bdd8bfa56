-- An audit log: one line per statement, written when its result is known: time, client address,
-- user, schema, status (OK n rows / ERR code), server time in microseconds, the statement.
-- The file is RINGPROXY_AUDIT_LOG (default ringproxy-audit.log in the working directory);
-- each line is flushed as it is written, so several workers can append to the same file.

local path = os.getenv("RINGPROXY_AUDIT_LOG") or "ringproxy-audit.log"
local file = assert(io.open(path, "a"))
file:setvbuf("line")

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  -- the client's own statement, injected so that its result comes to read_query_result
  proxy.queries:append(1, packet)
  return proxy.PROXY_SEND_QUERY
end

function read_query_result(inj)
  local rs = inj.resultset
  local status
  if rs.query_status == proxy.MYSQLD_PACKET_ERR then
    status = "ERR " .. tostring(rs.errcode)
  elseif rs.row_count then
    status = "OK " .. rs.row_count .. " rows"
  else
    status = "OK " .. tostring(rs.affected_rows) .. " affected"
  end
  local c = proxy.connection.client
  file:write(string.format("%s\t%s\t%s\t%s\t%s\t%d\t%s\n", os.date("!%Y-%m-%dT%H:%M:%SZ"),
    tostring(c.src.name), tostring(c.username), tostring(c.default_db), status,
    inj.response_time, (inj.query:sub(2):gsub("%s+", " "))))
  -- no return value: the result goes to the client as it is
end

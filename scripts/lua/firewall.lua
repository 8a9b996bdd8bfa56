-- A blocklist firewall: statements matching a rule are refused with an ERR packet and never
-- reach the server. Rules are Lua patterns over the normalized statement (keywords upper case,
-- literals replaced by `?`, identifiers back-quoted: see mysql.tokenizer.normalize), so
-- spacing, case and literal values do not matter.
local tokenizer = require("mysql.tokenizer")

local blocked = {
  { "^DROP DATABASE ", "DROP DATABASE" },
  { "^TRUNCATE ", "TRUNCATE" },
  { "^DELETE FROM `[^`]+` $", "DELETE without WHERE" },
  { "^UPDATE `[^`]+` SET [^W]*$", "UPDATE without WHERE" },
  { "INTO OUTFILE", "SELECT ... INTO OUTFILE" },
}

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local normalized = tokenizer.normalize(packet:sub(2))
  for _, rule in ipairs(blocked) do
    if normalized:find(rule[1]) then
      proxy.response = {
        type = proxy.MYSQLD_PACKET_ERR,
        errmsg = "ringproxy firewall: " .. rule[2] .. " is not allowed",
        errcode = 1142,
        sqlstate = "42000",
      }
      return proxy.PROXY_SEND_RESULT
    end
  end
end

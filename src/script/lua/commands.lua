-- proxy.commands (ringproxy): decodes a client command packet into a table.
--   parse(packet) -> { type = proxy.COM_*, query = ..., schema = ..., stmt_handler_id = ... } or nil
local M = {}

local function u32(s, at)
  local a, b, c, d = s:byte(at, at + 3)
  return a + b * 256 + c * 65536 + d * 16777216
end

function M.parse(packet)
  if type(packet) ~= "string" or #packet == 0 then return nil end
  local t = packet:byte(1)
  local cmd = { type = t }
  if t == proxy.COM_QUERY then
    cmd.query = packet:sub(2)
  elseif t == proxy.COM_INIT_DB or t == proxy.COM_CREATE_DB or t == proxy.COM_DROP_DB then
    cmd.schema = packet:sub(2)
  elseif t == proxy.COM_FIELD_LIST then
    local nul = packet:find("\0", 2, true) or (#packet + 1)
    cmd.table = packet:sub(2, nul - 1)
    cmd.wildcard = packet:sub(nul + 1)
  elseif t == proxy.COM_STMT_PREPARE then
    cmd.query = packet:sub(2)
  elseif (t == proxy.COM_STMT_EXECUTE or t == proxy.COM_STMT_CLOSE or t == proxy.COM_STMT_RESET
          or t == proxy.COM_STMT_FETCH or t == proxy.COM_STMT_SEND_LONG_DATA) and #packet >= 5 then
    cmd.stmt_handler_id = u32(packet, 2)
  elseif t == proxy.COM_PROCESS_KILL and #packet >= 5 then
    cmd.process_id = u32(packet, 2)
  end
  return cmd
end

return M

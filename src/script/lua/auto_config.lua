-- proxy.auto-config (ringproxy): scripts' settings in proxy.global.config, changed with SQL.
--   PROXY SHOW CONFIG                      every module.option = value
--   PROXY SET GLOBAL module.option = value  (a number, a quoted string, true or false)
--   PROXY SAVE CONFIG INTO 'file'  /  PROXY LOAD CONFIG FROM 'file'
-- handle(cmd) takes a command as proxy.commands.parse returns it (or a packet): a PROXY
-- statement is answered (proxy.response set, PROXY_SEND_RESULT returned); anything else
-- returns nil. Also reachable as proxy.global.config:handle(cmd).
local M = {}

local function ok(n)
  proxy.response = { type = proxy.MYSQLD_PACKET_OK, affected_rows = n or 0 }
  return proxy.PROXY_SEND_RESULT
end

local function err(msg)
  proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = msg, errcode = 1105, sqlstate = "07000" }
  return proxy.PROXY_SEND_RESULT
end

local function value_of(text)
  local s = text:match("^'(.*)'$") or text:match('^"(.*)"$')
  if s then return s end
  if text:lower() == "true" then return true end
  if text:lower() == "false" then return false end
  return tonumber(text)
end

local function show()
  local rows = {}
  for module, options in pairs(proxy.global.config) do
    if type(options) == "table" then
      for option, value in pairs(options) do
        rows[#rows + 1] = { module, option, type(value), tostring(value) }
      end
    end
  end
  table.sort(rows, function(a, b) return a[1] .. "." .. a[2] < b[1] .. "." .. b[2] end)
  proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
    fields = { { name = "module" }, { name = "option" }, { name = "type" }, { name = "value" } },
    rows = rows } }
  return proxy.PROXY_SEND_RESULT
end

local function set(module, option, text)
  local v = value_of(text)
  if v == nil then return err("PROXY SET GLOBAL: " .. text .. " is not a number, string or boolean") end
  if type(proxy.global.config[module]) ~= "table" then proxy.global.config[module] = {} end
  proxy.global.config[module][option] = v
  return ok(1)
end

local function save(file)
  local f, e = io.open(file, "w")
  if not f then return err("PROXY SAVE CONFIG: " .. tostring(e)) end
  local n = 0
  for module, options in pairs(proxy.global.config) do
    if type(options) == "table" then
      for option, value in pairs(options) do
        local text = type(value) == "string" and string.format("%q", value) or tostring(value)
        f:write(string.format("%s.%s = %s\n", module, option, text))
        n = n + 1
      end
    end
  end
  f:close()
  return ok(n)
end

local function load(file)
  local f, e = io.open(file, "r")
  if not f then return err("PROXY LOAD CONFIG: " .. tostring(e)) end
  local n = 0
  for line in f:lines() do
    local module, option, text = line:match("^%s*([%w_]+)%.([%w_]+)%s*=%s*(.-)%s*$")
    if module then
      set(module, option, (text:gsub('^"(.*)"$', "'%1'")))
      n = n + 1
    end
  end
  f:close()
  return ok(n)
end

function M.handle(cmd)
  local query
  if type(cmd) == "table" then
    if cmd.type ~= proxy.COM_QUERY then return nil end
    query = cmd.query
  elseif type(cmd) == "string" and cmd:byte() == proxy.COM_QUERY then
    query = cmd:sub(2)
  end
  if type(query) ~= "string" then return nil end
  local rest = query:match("^%s*[Pp][Rr][Oo][Xx][Yy]%s+(.-)%s*;?%s*$")
  if not rest then return nil end
  local upper = rest:upper()
  if upper:match("^SHOW%s+CONFIG$") then return show() end
  local module, option, text = rest:match("^[Ss][Ee][Tt]%s+[Gg][Ll][Oo][Bb][Aa][Ll]%s+([%w_]+)%.([%w_]+)%s*=%s*(.-)$")
  if module then return set(module, option, text) end
  local file = rest:match("^[Ss][Aa][Vv][Ee]%s+[Cc][Oo][Nn][Ff][Ii][Gg]%s+[Ii][Nn][Tt][Oo]%s+'(.-)'$")
  if file then return save(file) end
  file = rest:match("^[Ll][Oo][Aa][Dd]%s+[Cc][Oo][Nn][Ff][Ii][Gg]%s+[Ff][Rr][Oo][Mm]%s+'(.-)'$")
  if file then return load(file) end
  return err("PROXY: expected SHOW CONFIG, SET GLOBAL module.option = value, SAVE CONFIG INTO 'file' or LOAD CONFIG FROM 'file'")
end

return M

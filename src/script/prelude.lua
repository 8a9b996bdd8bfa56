-- ringproxy's Lua side of MySQL Proxy's hook API: loaded once per worker VM before the script.
-- The Rust side (src/script/vm.rs) calls rp.new_connection and rp.call; everything a script
-- sees lives in `proxy`, the constants, and the preloaded modules.
local rp = {}

-- proxy.queries: the injection queue of one connection.
local Queries = {}
Queries.__index = Queries

local function entry(id, packet, opts)
  assert(type(id) == "number", "proxy.queries: id must be a number")
  assert(type(packet) == "string", "proxy.queries: packet must be a string")
  return { id = id, query = packet,
           resultset_is_needed = (type(opts) == "table" and opts.resultset_is_needed) and true or false }
end

function Queries:append(id, packet, opts) self.items[#self.items + 1] = entry(id, packet, opts) end
function Queries:prepend(id, packet, opts) table.insert(self.items, 1, entry(id, packet, opts)) end
function Queries:reset() self.items = {} end
function Queries:len() return #self.items end

-- A new connection: the script's chunk runs in an environment of its own (globals a script
-- assigns are per connection, as in MySQL Proxy; _G is read through).
function rp.new_connection(chunk, connection)
  local env = setmetatable({}, { __index = _G })
  local state = { env = env, connection = connection, queries = setmetatable({ items = {} }, Queries) }
  setfenv(chunk, env)
  chunk()
  return state
end

-- Which hooks a connection's script defines, as a bit set (order: rp.hook_names).
rp.hook_names = { "connect_server", "read_handshake", "read_auth", "read_auth_result",
                  "read_query", "read_query_result", "disconnect_client" }
function rp.hooks(state)
  local bits, bit = 0, 1
  for _, name in ipairs(rp.hook_names) do
    if type(state.env[name]) == "function" then bits = bits + bit end
    bit = bit * 2
  end
  return bits
end

-- Calls hook `name` of a connection: proxy.connection/queries/response are that connection's
-- for the call. Returns the hook's return value and proxy.response.
function rp.call(state, name, arg)
  local f = state.env[name]
  proxy.connection = state.connection
  proxy.queries = state.queries
  proxy.response = nil
  local ret = f(arg)
  return ret, proxy.response
end

-- inj.resultset.rows: an iterator over decoded rows.
function rp.rows(list)
  local i = 0
  return function()
    i = i + 1
    return list[i]
  end
end

-- proxy.global: tables a script keeps there are shared by every worker's VM; reads and writes go
-- through the synchronized store (values copied in and out), nested tables by their path.
local function global_view(path)
  return setmetatable({}, {
    __index = function(_, key)
      if #path == 0 and key == "backends" then return rp.backends() end
      local value, is_table = rp.store_get(path, key)
      if is_table then
        local sub = { unpack(path) }
        sub[#sub + 1] = key
        return global_view(sub)
      end
      return value
    end,
    __newindex = function(_, key, value) rp.store_set(path, key, value) end,
  })
end
rp.global_view = global_view

return rp

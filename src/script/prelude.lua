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

-- Calls hook `name` of a connection (nothing when its script defines none):
-- proxy.connection/queries/response are that connection's for the call. Returns the hook's
-- return value, proxy.response, and the queued injections (nil when none; the queue is emptied).
rp.spare_response = {}
function rp.call(state, name, arg)
  local f = state.env[name]
  if type(f) ~= "function" then return nil end
  proxy.connection = state.connection
  proxy.queries = state.queries
  -- scripts set fields of proxy.response directly (proxy.response.type = ...): it is an empty
  -- table, the same one until a script fills it (no garbage per call)
  local response = rp.spare_response
  if next(response) ~= nil then
    response = {}
    rp.spare_response = response
  end
  proxy.response = response
  local ret = f(arg)
  local items = state.queries.items
  if #items == 0 then return ret, proxy.response, nil end
  state.queries.items = {}
  return ret, proxy.response, items
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
-- `pairs()` walks them (through __pairs, which the `pairs` below honours); `#` does not.
local function global_view(path)
  return setmetatable({}, {
    __index = function(_, key)
      if #path == 0 and key == "backends" then return rp.backends() end
      if #path == 1 and path[1] == "config" and key == "handle" then
        -- proxy.global.config:handle(cmd), as proxy.auto-config installs it
        return function(_, cmd) return require("proxy.auto-config").handle(cmd) end
      end
      local value, is_table = rp.store_get(path, key)
      if is_table then
        local sub = { unpack(path) }
        sub[#sub + 1] = key
        return global_view(sub)
      end
      return value
    end,
    __newindex = function(_, key, value) rp.store_set(path, key, value) end,
    __pairs = function(view)
      local keys, i = rp.store_keys(path), 0
      return function()
        i = i + 1
        local k = keys[i]
        if k ~= nil then return k, view[k] end
      end, view, nil
    end,
  })
end
rp.global_view = global_view

-- Lua 5.1's pairs() ignores __pairs: this one honours it (proxy.global's views use it).
local raw_pairs = pairs
function pairs(t)
  local mt = getmetatable(t)
  if type(mt) == "table" and mt.__pairs then return mt.__pairs(t) end
  return raw_pairs(t)
end

-- proxy.global.backends[i].pool.users[name]: idle connections kept for a user (ringproxy keeps
-- none for pass-through sessions: every user reads as 0).
function rp.pool_users()
  return setmetatable({}, { __index = function()
    return { cur_idle_connections = 0, min_idle_connections = 0, max_idle_connections = 0 }
  end })
end

return rp

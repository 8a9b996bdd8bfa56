-- proxy.balance (ringproxy): backend choice for connect_server / read_query.
--   idle_failsafe_rw() -> index of a read-write backend that is up, the one with the fewest clients
--   idle_ro()          -> index of a read-only backend that is up, the one with the fewest clients
local M = {}

local function least_loaded(kind)
  local best, best_clients
  local backends = proxy.global.backends
  for i = 1, #backends do
    local b = backends[i]
    if b.state ~= proxy.BACKEND_STATE_DOWN and (kind == nil or b.type == kind) then
      if best == nil or b.connected_clients < best_clients then
        best, best_clients = i, b.connected_clients
      end
    end
  end
  return best
end

function M.idle_failsafe_rw() return least_loaded(proxy.BACKEND_TYPE_RW) end
function M.idle_ro() return least_loaded(proxy.BACKEND_TYPE_RO) end
function M.least_loaded() return least_loaded(nil) end

return M

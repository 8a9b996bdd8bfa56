-- Query rewriting: each COM_QUERY whose text matches a rule's Lua pattern is rewritten before it
-- reaches the server; the client sees the result of the rewritten query as if it had sent it.
-- Edit `rules` (pattern, replacement as string.gsub takes them). The file is reloaded when it
-- changes: new connections get the new rules.

local rules = {
  -- a table renamed on the server, still named by old clients
  { "([Ff][Rr][Oo][Mm]%s+)legacy_orders", "%1orders" },
  -- an old spelling of a function
  { "[Nn][Oo][Ww]_[Uu][Tt][Cc]%(%)", "UTC_TIMESTAMP()" },
}

function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local query = packet:sub(2)
  local rewritten = query
  for _, rule in ipairs(rules) do
    rewritten = rewritten:gsub(rule[1], rule[2])
  end
  if rewritten == query then return end -- no decision: the packet goes on unchanged
  proxy.queries:append(1, string.char(proxy.COM_QUERY) .. rewritten)
  return proxy.PROXY_SEND_QUERY
end

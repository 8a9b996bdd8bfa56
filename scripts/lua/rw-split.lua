-- Read/write splitting with transaction awareness, for pooled listeners
-- (--pooled-listen ... --backend PRIMARY --read-only-backends REPLICA --proxy-lua-script this):
-- a statement that only reads, outside a transaction, goes to a read-only backend (the least
-- loaded one that is up); everything else goes to the read-write backend: writes, locking reads,
-- statements that read session-dependent values, and every statement from BEGIN / START
-- TRANSACTION / SET autocommit = 0 to COMMIT / ROLLBACK / SET autocommit = 1. The proxy keeps a
-- session on its connection while the server reports a transaction anyway; the script's own
-- tracking makes sure the transaction starts on the read-write backend.
local tokenizer = require("mysql.tokenizer")
local balance = require("proxy.balance")

local in_transaction = false -- per connection: each connection runs this chunk in its own environment

local function starts_transaction(q)
  return q:match("^BEGIN") or q:match("^START%s+TRANSACTION") or q:match("^SET%s+AUTOCOMMIT%s*=%s*0")
    or q:match("^SET%s+@@AUTOCOMMIT%s*=%s*0") or q:match("^XA%s+START")
end

local function ends_transaction(q)
  return q:match("^COMMIT") or q:match("^ROLLBACK") or q:match("^SET%s+AUTOCOMMIT%s*=%s*1")
    or q:match("^SET%s+@@AUTOCOMMIT%s*=%s*1") or q:match("^XA%s+COMMIT") or q:match("^XA%s+ROLLBACK")
end

-- A statement that only reads and may run on a replica.
local function read_only(q)
  if not (q:match("^SELECT") or q:match("^SHOW") or q:match("^DESC") or q:match("^EXPLAIN")) then
    return false
  end
  return not (q:find("FOR%s+UPDATE") or q:find("LOCK%s+IN%s+SHARE%s+MODE") or q:find("GET_LOCK")
    or q:find("LAST_INSERT_ID") or q:find("FOUND_ROWS") or q:find("@") or q:find("INTO"))
end

function read_query(packet)
  local rw = balance.idle_failsafe_rw() or 1
  if packet:byte() ~= proxy.COM_QUERY then
    proxy.connection.backend_ndx = rw -- prepared statements and the rest: the primary
    return
  end
  local first = tokenizer.first_stmt_token(tokenizer.tokenize(packet:sub(2)))
  local q = packet:sub(2):gsub("^%s+", ""):upper()
  if first and first.token_name == "TK_COMMENT" then q = first.text:upper() end
  if starts_transaction(q) then
    in_transaction = true
  elseif ends_transaction(q) then
    in_transaction = false
    proxy.connection.backend_ndx = rw
    return
  end
  local ro = (not in_transaction) and read_only(q) and balance.idle_ro()
  proxy.connection.backend_ndx = ro or rw
end

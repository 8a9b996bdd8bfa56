-- For RINGPROXY_TEST_TARGET=scripted: every hook defined, no decision taken anywhere, and every
-- COM_QUERY re-injected with its result handed to read_query_result (held whole, then
-- forwarded), so the functional suites run through the scripted session's whole path.
function connect_server() end
function read_handshake() end
function read_auth() end
function read_auth_result(auth) end
function read_query(packet)
  if packet:byte() == proxy.COM_QUERY then
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  end
end
function read_query_result(inj) end
function disconnect_client() end

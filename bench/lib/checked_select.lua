-- bench/lib/checked_select.lua — a sysbench test whose every query checks its own answer.
--
-- Each event runs, on the tables sysbench's oltp tests prepare (sbtest1..N, ids 1..table_size),
-- one point select and one range select, both naming the sysbench thread that asks:
--   SELECT id, <tid> FROM sbtestT WHERE id = I
--   SELECT id, <tid> FROM sbtestT WHERE id BETWEEN I AND I+9 ORDER BY id
-- and fails the run (sysbench exits non-zero) when an answer has the wrong rows or another
-- thread's tag: under a proxy that multiplexes or pipelines several clients' queries on one
-- backend connection, a response handed to the wrong client shows at once. Text protocol.

sysbench.cmdline.options = {
   tables = {"Number of tables", 1},
   table_size = {"Number of rows per table", 10000},
}

function thread_init()
   drv = sysbench.sql.driver()
   con = drv:connect()
end

function thread_done()
   con:disconnect()
end

local function fail(what, sql, got)
   error(string.format("thread %d: %s: %s (got %s)", sysbench.tid, what, sql, tostring(got)))
end

local function check(sql, first, count)
   local rs = con:query(sql)
   if rs == nil or rs.nrows ~= count then
      fail("wrong row count", sql, rs and rs.nrows)
   end
   for i = 0, count - 1 do
      local row = rs:fetch_row()
      if tonumber(row[1]) ~= first + i then
         fail("wrong id", sql, row[1])
      end
      if tonumber(row[2]) ~= sysbench.tid then
         fail("another thread's answer", sql, row[2])
      end
   end
end

function event()
   local t = sysbench.rand.uniform(1, sysbench.opt.tables)
   local size = sysbench.opt.table_size
   local id = sysbench.rand.uniform(1, size)
   check(string.format("SELECT id, %d FROM sbtest%d WHERE id = %d", sysbench.tid, t, id), id, 1)
   local from = sysbench.rand.uniform(1, size - 9)
   check(string.format("SELECT id, %d FROM sbtest%d WHERE id BETWEEN %d AND %d ORDER BY id",
                       sysbench.tid, t, from, from + 9), from, 10)
end

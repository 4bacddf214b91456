-- Shared by the scripts (prepended to each).
local function key(P, D, k)
  return P .. '{' .. D .. '}:' .. k
end

-- A new session's epoch, `boot:session`: boot is this Redis data set's
-- id (made from `candidate`, a random number, if it has none: an emptied
-- Redis gives epochs no client has seen), session counts sessions.
-- Sessions there are (every node's): `Pcount`, kept by the scripts that
-- make and end sessions.
local function sessions(P)
  return tonumber(redis.call('GET', P .. 'count') or '0')
end

local function new_epoch(P, candidate)
  local boot = redis.call('GET', P .. 'instance')
  if not boot then
    boot = candidate
    redis.call('SET', P .. 'instance', boot)
  end
  redis.call('INCR', P .. 'count')
  return boot .. ':' .. (redis.call('INCR', P .. 'sessions') % 4294967296)
end

local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end

-- Appends event `ev` to device D's buffer at its next seq, making the
-- session if it has none and `create` (its TTL starts), trims the buffer
-- to its bounds (oldest first, never the new event), keeps the event as
-- D's retained one of its name if asked, and notes it for D's owner node
-- in `bynode`. Answers {epoch, seq, live}, or nil if D has no session and
-- not `create`.
local function append(P, D, ev, create, bynode)
  local sk, bk = key(P, D, 's'), key(P, D, 'b')
  local m = redis.call('HMGET', sk, 'ep', 'own')
  local ep, own = m[1], m[2]
  if not ep then
    if not create then
      return nil
    end
    ep = new_epoch(P, ev.boot)
    own = ''
    redis.call('DEL', bk)
    redis.call('HSET', sk, 'ep', ep, 'sq', 0, 'gen', 0, 'own', '', 'wr', 0, 'by', 0)
    redis.call('ZADD', P .. 'expiry', ev.now + ev.ttl, D)
    redis.call('ZADD', P .. 'devices', 0, D)
  end
  local seq = redis.call('HINCRBY', sk, 'sq', 1)
  redis.call('XADD', bk, seq .. '-0', 'n', ev.name, 'p', ev.pub, 'd', ev.data)
  local by = redis.call('HINCRBY', sk, 'by', #ev.name + #ev.data)
  local n = redis.call('XLEN', bk)
  while n > ev.maxn or (by > ev.maxb and n > 1) do
    local oldest = redis.call('XRANGE', bk, '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', bk, oldest[1])
    by = redis.call('HINCRBY', sk, 'by', -(#oldest[2][2] + #oldest[2][6]))
    n = n - 1
  end
  if ev.retain then
    redis.call('HSET', key(P, D, 'r'), ev.name, cjson.encode({ep, seq, tonumber(ev.pub), ev.data}))
  end
  local live = 0
  if own ~= '' then
    live = 1
    local l = bynode[own]
    if not l then
      l = {}
      bynode[own] = l
    end
    l[#l + 1] = {D, ep, seq}
  end
  return {ep, seq, live}
end

-- Sends `ev` to each node that holds streams of the devices noted, once.
local function route(P, ev, bynode)
  for node, l in pairs(bynode) do
    redis.call('PUBLISH', P .. 'node:' .. node, cjson.encode(
      {event = {name = ev.name, data = ev.data, published = tonumber(ev.pub), to = l}}))
  end
end

-- The event of ARGV[2..10]: name, data, published_ms, max_events,
-- max_bytes, boot candidate (see new_epoch), ttl_ms, retain ('1' or '0'),
-- max_retained_names, max_sessions.
local function event_of(argv)
  return {
    name = argv[2], data = argv[3], pub = argv[4],
    maxn = tonumber(argv[5]), maxb = tonumber(argv[6]), boot = argv[7],
    ttl = tonumber(argv[8]), retain = argv[9] == '1', maxr = tonumber(argv[10]),
    maxs = tonumber(argv[11]),
    now = now_ms(),
  }
end

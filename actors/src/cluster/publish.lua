-- Appends one event to each device's buffer, creating the sessions that do
-- not exist (their TTL starts), trims each buffer to its bounds (oldest
-- first, never the new event), keeps it as the device's retained event of
-- its name if asked, and routes it to the node that holds each device's
-- live stream: one PUBLISH per node. Atomic, so each device's events get
-- consecutive seqs and reach its owner in seq order.
-- ARGV: prefix, name, data, published_ms, max_events, max_bytes, boot,
-- ttl_ms, retain ('1' or '0'), max_retained_names, device...
-- Answers {1, {{epoch, seq, live (1 if a node held its stream)}...}}, or
-- {0, {}} (nothing changed) if a device retains max_retained_names other
-- names.
local P, name, data, pub = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxn, maxb, boot = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local ttl, retain, maxr = tonumber(ARGV[8]), ARGV[9] == '1', tonumber(ARGV[10])
local FIRST = 11
local function key(D, k) return P .. '{' .. D .. '}:' .. k end
if retain then
  for i = FIRST, #ARGV do
    local rk = key(ARGV[i], 'r')
    if redis.call('HEXISTS', rk, name) == 0 and redis.call('HLEN', rk) >= maxr then
      return {0, {}}
    end
  end
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local size = #name + #data
local out, bynode = {}, {}
for i = FIRST, #ARGV do
  local D = ARGV[i]
  local sk, bk = key(D, 's'), key(D, 'b')
  local m = redis.call('HMGET', sk, 'ep', 'own')
  local ep, own = m[1], m[2]
  if not ep then
    ep = boot .. ':' .. (redis.call('INCR', P .. 'sessions') % 4294967296)
    own = ''
    redis.call('DEL', bk)
    redis.call('HSET', sk, 'ep', ep, 'sq', 0, 'gen', 0, 'own', '', 'wr', 0, 'by', 0)
    redis.call('ZADD', P .. 'expiry', now + ttl, D)
    redis.call('SADD', P .. 'devices', D)
  end
  local seq = redis.call('HINCRBY', sk, 'sq', 1)
  redis.call('XADD', bk, seq .. '-0', 'n', name, 'p', pub, 'd', data)
  local by = redis.call('HINCRBY', sk, 'by', size)
  local n = redis.call('XLEN', bk)
  while n > maxn or (by > maxb and n > 1) do
    local oldest = redis.call('XRANGE', bk, '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', bk, oldest[1])
    by = redis.call('HINCRBY', sk, 'by', -(#oldest[2][2] + #oldest[2][6]))
    n = n - 1
  end
  if retain then
    redis.call('HSET', key(D, 'r'), name, cjson.encode({ep, seq, tonumber(pub), data}))
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
  out[#out + 1] = {ep, seq, live}
end
for node, l in pairs(bynode) do
  redis.call('PUBLISH', P .. 'node:' .. node,
    cjson.encode({event = {name = name, data = data, published = tonumber(pub), to = l}}))
end
return {1, out}

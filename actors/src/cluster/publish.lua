-- Appends one event to each device's buffer, creating the sessions that do
-- not exist, and routes it to the node that holds each device's live
-- stream: one PUBLISH per node. Atomic, so each device's events get
-- consecutive seqs and reach its owner in seq order.
-- ARGV: prefix, name, data, published_ms, max_events, boot, device...
-- Answers per device: {epoch, seq, live (1 if a node held its stream)}.
local P, name, data, pub = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxn, boot = ARGV[5], ARGV[6]
local out, bynode = {}, {}
for i = 7, #ARGV do
  local D = ARGV[i]
  local sk, bk = P .. '{' .. D .. '}:s', P .. '{' .. D .. '}:b'
  local m = redis.call('HMGET', sk, 'ep', 'own')
  local ep, own = m[1], m[2]
  if not ep then
    ep = boot .. ':' .. (redis.call('INCR', P .. 'sessions') % 4294967296)
    own = ''
    redis.call('DEL', bk)
    redis.call('HSET', sk, 'ep', ep, 'sq', 0, 'gen', 0, 'own', '', 'wr', 0)
  end
  local seq = redis.call('HINCRBY', sk, 'sq', 1)
  redis.call('XADD', bk, 'MAXLEN', maxn, seq .. '-0', 'n', name, 'p', pub, 'd', data)
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
return out

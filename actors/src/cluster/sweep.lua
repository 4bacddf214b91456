-- Ends the sessions whose TTL has passed (their retained events stay). A
-- session owned by a node that is still alive (its `alive:` key, which it
-- refreshes, exists) has a live stream: its TTL starts again instead. One
-- owned by a node whose key lapsed ends, and that node is told.
-- ARGV: prefix, ttl_ms, at most this many sessions.
-- Answers {device, events it held}... of the sessions ended.
local P, ttl, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ended = {}
for _, D in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', now, 'LIMIT', 0, limit)) do
  local sk, bk = P .. '{' .. D .. '}:s', P .. '{' .. D .. '}:b'
  local own = redis.call('HGET', sk, 'own')
  if own and own ~= '' and redis.call('EXISTS', P .. 'alive:' .. own) == 1 then
    redis.call('ZADD', P .. 'expiry', now + ttl, D)
  else
    if own and own ~= '' then
      -- Its node stopped refreshing `alive:`: should it still hold the
      -- stream (stalled, not dead), it ends it.
      local gen = redis.call('HINCRBY', sk, 'gen', 1)
      redis.call('PUBLISH', P .. 'node:' .. own,
        cjson.encode({kick = {device = D, generation = gen, ending = 'admin'}}))
    end
    ended[#ended + 1] = D
    ended[#ended + 1] = redis.call('XLEN', bk)
    if redis.call('DEL', sk) == 1 then
      redis.call('DECR', P .. 'count')
    end
    redis.call('DEL', bk)
    redis.call('ZREM', P .. 'expiry', D)
    if redis.call('EXISTS', P .. '{' .. D .. '}:r') == 0 then
      redis.call('ZREM', P .. 'devices', D)
    end
  end
end
return ended

-- An operator ends the device's live stream, wherever it is: the owner node
-- is told to end it (`ending`: 'admin' lets its client come straight back,
-- 'blocked' also refuses its connects for block_ms on every node, 'deleted'
-- also forgets the device: session, buffer, retained events). The
-- generation grows, so the ended stream can write nothing more.
-- ARGV: prefix, device, ending, block_ms, ttl_ms.
-- Answers 1 if a node held a live stream of the device (for 'deleted': if
-- there was anything to forget), else 0.
local P, D, ending = ARGV[1], ARGV[2], ARGV[3]
local block_ms, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local sk = key(P, D, 's')
local own = redis.call('HGET', sk, 'own')
local live = own and own ~= ''
if ending == 'blocked' and live then
  redis.call('SET', key(P, D, 'k'), 1, 'PX', block_ms)
end
if live then
  local gen = redis.call('HINCRBY', sk, 'gen', 1)
  local now = now_ms()
  redis.call('HSET', sk, 'own', '', 'seen', now)
  redis.call('HINCRBY', sk, 'kicks', 1)
  redis.call('ZADD', P .. 'expiry', now + ttl, D)
  redis.call('PUBLISH', P .. 'node:' .. own,
    cjson.encode({kick = {device = D, generation = gen, ending = ending}}))
end
if ending == 'deleted' then
  if redis.call('EXISTS', sk) == 1 then
    redis.call('DECR', P .. 'count')
  end
  local existed = redis.call('EXISTS', sk, key(P, D, 'r'))
  redis.call('DEL', sk, key(P, D, 'b'), key(P, D, 'r'), key(P, D, 'k'),
    key(P, D, 'ki'), key(P, D, 'kr'), key(P, D, 'kc'), key(P, D, 'kf'))
  redis.call('ZREM', P .. 'devices', D)
  redis.call('ZREM', P .. 'expiry', D)
  if existed > 0 then
    return 1
  end
  return 0
end
if live then
  return 1
end
return 0

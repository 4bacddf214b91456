-- A stream of the device connects on node N: N takes ownership (the
-- generation, a fencing token, grows by one), the previous owner node is
-- told to kick its stream, and the buffer after the stream's start and the
-- retained events are read, all at once: every event appended before this
-- is in the answer, every one after it is published to N.
-- Refused, changing nothing: a device an operator blocked
-- (`reconnect=false`); an instance kicked by another one within the
-- instance window; under the refuse policy, a client without an instance
-- while the device cools down from flapping (see kicked.lua); a device
-- without a session when there are max_sessions.
-- ARGV: prefix, device, node, boot candidate (see new_epoch), since_epoch
-- ('' if none), since_seq, connection id (named in the kick), ttl_ms,
-- client address, instance ('' if none), instance_window_ms, max_sessions.
-- Answers {1, epoch, last seq, generation, oldest seq kept, written seq,
-- resumed (1 if the entries follow since_seq, 0 if the written seq),
-- entries, retained (name, encoded event, ...)}, or {0 blocked, 2 kicked
-- instance, 3 flapping, 4 full, ...} if refused.
local P, D, N, boot = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local since_ep, since_seq, conn = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local ttl, addr, instance, iw = tonumber(ARGV[8]), ARGV[9], ARGV[10], tonumber(ARGV[11])
local maxs = tonumber(ARGV[12])
local function refused(why)
  return {why, '', 0, 0, 0, 0, 0, {}, {}}
end
if redis.call('EXISTS', key(P, D, 'k')) == 1 then
  return refused(0)
end
local sk, bk, rk = P .. '{' .. D .. '}:s', P .. '{' .. D .. '}:b', P .. '{' .. D .. '}:r'
local now = now_ms()
if instance ~= '' then
  local kicked_at = redis.call('ZSCORE', key(P, D, 'ki'), instance)
  if kicked_at and now - tonumber(kicked_at) < iw then
    return refused(2)
  end
elseif redis.call('EXISTS', key(P, D, 'kc')) == 1 then
  return refused(3)
end
local m = redis.call('HMGET', sk, 'ep', 'sq', 'own', 'wr')
local ep, sq, old, wr = m[1], tonumber(m[2]), m[3], tonumber(m[4])
if not ep then
  if sessions(P) >= maxs then
    return refused(4)
  end
  ep = new_epoch(P, boot)
  sq, old, wr = 0, '', 0
  redis.call('DEL', bk)
  redis.call('HSET', sk, 'ep', ep, 'sq', 0, 'gen', 0, 'own', '', 'wr', 0, 'by', 0)
  redis.call('ZADD', P .. 'devices', 0, D)
end
local gen = redis.call('HINCRBY', sk, 'gen', 1)
redis.call('HSET', sk, 'own', N, 'cid', conn, 'addr', addr, 'at', now)
redis.call('HINCRBY', sk, 'att', 1)
-- Swept only once N is gone (see sweep.lua) and its TTL has passed.
redis.call('ZADD', P .. 'expiry', now + ttl, D)
if old ~= '' then
  redis.call('HINCRBY', sk, 'kicks', 1)
  if old ~= N then
    redis.call('PUBLISH', P .. 'node:' .. old, cjson.encode({kick = {
      device = D, generation = gen, ending = 'replaced', by = conn, instance = instance}}))
  end
end
local first = sq + 1
local oldest = redis.call('XRANGE', bk, '-', '+', 'COUNT', 1)[1]
if oldest then
  first = tonumber(string.match(oldest[1], '^(%d+)'))
end
local after, resumed = wr, 0
if since_ep == ep and since_seq <= sq and since_seq + 1 >= first then
  after, resumed = since_seq, 1
end
local entries = redis.call('XRANGE', bk, '(' .. after .. '-0', '+')
return {1, ep, sq, gen, first, wr, resumed, entries, redis.call('HGETALL', rk)}

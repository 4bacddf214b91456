-- The device's stream on node N ended, having written up to a seq of
-- epoch E. What a stream wrote is a fact whoever owns the device now, so it
-- is recorded if the session is still of epoch E. N gives up ownership and
-- the session's TTL starts only if no stream took the device over since
-- (fenced: the owner or the generation differs).
-- ARGV: prefix, device, node, generation, written seq, epoch, ttl_ms.
-- Answers 1 if N still owned the device, 0 if fenced.
local P, D, N, gen, written = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local ep, ttl = ARGV[6], tonumber(ARGV[7])
local sk = P .. '{' .. D .. '}:s'
local m = redis.call('HMGET', sk, 'own', 'gen', 'wr', 'ep')
if m[4] == ep and written > tonumber(m[3]) then
  redis.call('HSET', sk, 'wr', written)
end
if m[1] ~= N or tonumber(m[2]) ~= gen then
  return 0
end
local now = now_ms()
redis.call('HSET', sk, 'own', '', 'seen', now)
redis.call('ZADD', P .. 'expiry', now + ttl, D)
return 1

-- The device's stream on node N ended: N gives up ownership and records
-- what the stream wrote, unless another stream took the device over since
-- (fenced: the owner or the generation differs), in which case nothing is
-- written.
-- ARGV: prefix, device, node, generation, written seq.
-- Answers 1 if written, 0 if fenced.
local P, D, N, gen, written = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local sk = P .. '{' .. D .. '}:s'
local m = redis.call('HMGET', sk, 'own', 'gen', 'wr')
if m[1] ~= N or tonumber(m[2]) ~= gen then
  return 0
end
redis.call('HSET', sk, 'own', '')
if written > tonumber(m[3]) then
  redis.call('HSET', sk, 'wr', written)
end
return 1
